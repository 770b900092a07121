"""What a style generator is trained towards, measured once on the style slices (paper sec. 2.2, and beyond).

- :func:`compute_targets`: per-segment Gram matrices (eq. 1's targets) and mean HU of each style slice, on the
  whole slice at native spacing;
- :func:`nps_targets`: the style's radial noise power spectrum in soft tissue (the NPS texture term);
- :func:`texture_init`: the generator's initial noise colouring filter and per-segment noise amplitudes,
  measured from the style slice's NPS (:mod:`styleseg.texture`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from styleseg.style.losses import (
    NpsTargets,
    StyleTargets,
    radial_bins,
    segment_masks,
    style_log_nps,
    style_targets,
)
from styleseg.style.vgg import VGG19Features, ct_to_vgg_input

log = logging.getLogger("styleseg.style.targets")

NPS_SOFT_TISSUE = ("heart", "body")  # segments whose texture the NPS term compares


def nps_targets(style_hu: list[np.ndarray], style_labels: list[np.ndarray], schema, roi: int,
                device: torch.device) -> NpsTargets:
    """The NPS term's targets for every style slice. Like the texture metric (``texture.slice_nps``), a
    slice whose flat soft tissue holds no ``roi``-px ROI is measured with smaller ones: the largest of
    roi, 2/3 roi, 1/2 roi that every style allows is used (a style with none at all gets no NPS term)."""
    logs: list[torch.Tensor | None] = []
    for size in (roi, max(8, roi * 2 // 3), max(8, roi // 2)):
        bins, valid = radial_bins(size)
        logs = [style_log_nps(h, lab, bins, size) for h, lab in zip(style_hu, style_labels, strict=True)]
        if all(lg is not None for lg in logs):
            break
    for i, lg in enumerate(logs):
        if lg is None:
            log.warning("style %d: no near-uniform soft-tissue ROI; its NPS texture term is off", i)
    has = torch.tensor([lg is not None for lg in logs])
    tgt = torch.stack([lg if lg is not None else torch.zeros(bins.shape[1]) for lg in logs])
    classes = tuple(schema.value(n) for n in NPS_SOFT_TISSUE if n in schema.names)
    log.info("NPS texture term: %d-px ROIs, %d of %d styles", size, int(has.sum()), len(logs))
    return NpsTargets(tgt.to(device), has.to(device), bins.to(device), valid.to(device), classes, size)


def compute_targets(vgg: VGG19Features, hu: list[np.ndarray], labels: list[np.ndarray], num_classes: int,
                    layers: tuple[str, ...], device: torch.device) -> tuple[StyleTargets, torch.Tensor]:
    """Per-segment Gram targets (computed once, whole slice, native spacing) and mean HU per segment."""
    per, means = [], []
    with torch.no_grad():
        for h, lab in zip(hu, labels, strict=True):
            x = torch.from_numpy(np.asarray(h, np.float32))[None, None].to(device)
            lt = torch.from_numpy(np.asarray(lab, np.int64))[None].to(device)
            masks = segment_masks(lt, num_classes)
            feats = vgg(ct_to_vgg_input(x))
            per.append(style_targets({k: feats[k].float() for k in layers}, masks, layers))
            area = masks.flatten(2).sum(2)
            means.append((x * masks).flatten(2).sum(2) / area.clamp_min(1))
    t = StyleTargets({k: torch.cat([p.grams[k] for p in per]) for k in layers}, torch.cat([p.present for p in per]))
    return t, torch.cat(means)


def _hp_noise_std(hu: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise estimate inside ``mask`` (eroded): 1.4826 MAD of ``hu - G_1px * hu``, in units where
    unit white noise gives 1 (so it is the white-noise-equivalent std of the high-pass band)."""
    from scipy import ndimage as ndi

    m = ndi.binary_erosion(mask, iterations=2)
    if m.sum() < 30:
        return float("nan")
    resid = hu - ndi.gaussian_filter(hu, 1.0)
    v = resid[m]
    white = 0.874  # 1.4826 MAD of (n - G_1px n) for unit white n (measured on 512^2 samples)
    return float(1.4826 * np.median(np.abs(v - np.median(v))) / white)


def texture_init(hu: np.ndarray, label: np.ndarray, num_classes: int, kernel: int = 11,
                 mode: str = "nps", uniform: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Initial noise colouring filter (k, k; unit energy) and per-segment amplitudes (K,; HU) of a style slice.

    ``mode="nps"``: |H(f)| = sqrt(NPS(f)) from the soft-tissue NPS of the slice (:func:`styleseg.texture.
    slice_nps`, per pixel), zero phase, cropped to k x k and normalised; the soft-tissue amplitude is the
    NPS's noise std. Other segments scale it by their robust high-pass noise relative to soft tissue
    (clipped to [0.3, 3]). ``mode="white"``, or a slice without a usable soft-tissue ROI: a delta filter
    (white noise) with the robust high-pass estimate as amplitude. Segments in ``uniform`` get the soft-tissue
    amplitude: CT noise is set by the photons of the whole projection, nearly the same across a slice, and the
    high-pass of a thin structure (bone whose inside the generator takes from the source) measures its
    trabeculae and edges more than its noise."""
    from styleseg.texture import resample_radial, slice_nps

    hu = np.asarray(hu, np.float64)
    label = np.asarray(label)
    ref = _hp_noise_std(hu, np.isin(label, (3, 6)))
    if not np.isfinite(ref):
        ref = _hp_noise_std(hu, label > 0)
    ref = 10.0 if not np.isfinite(ref) else max(ref, 1.0)
    filt = np.zeros((kernel, kernel))
    filt[kernel // 2, kernel // 2] = 1.0
    soft = ref
    if mode == "nps":
        try:
            r = slice_nps(hu, 1.0, label > 0)
            n = 64
            f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
            mag = np.sqrt(np.maximum(resample_radial(r, np.minimum(f, r.freq[-1])), 0.0))
            mag[0, 0] = 0.0
            h = np.fft.fftshift(np.real(np.fft.ifft2(mag)))
            c, k2 = n // 2, kernel // 2
            filt = h[c - k2:c + k2 + 1, c - k2:c + k2 + 1]
            filt = filt / max(float(np.sqrt((filt**2).sum())), 1e-12)
            soft = float(r.std)
        except ValueError:
            log.info("no soft-tissue NPS in the style slice; white-noise initialisation")
    amps = np.full(num_classes, soft, np.float32)
    for k in range(num_classes):
        if k in uniform:
            continue
        e = _hp_noise_std(hu, label == k)
        if np.isfinite(e):
            amps[k] = soft * float(np.clip(e / ref, 0.3, 3.0))
    return filt.astype(np.float32), amps


def absent_structures(labels: np.ndarray, style_labels: list[np.ndarray], schema) -> list[list[str]]:
    """Per style slice, the structures of the schema that the source's label maps hold and that style slice's label
    map does not. The segment-wise style loss has no texture to give such a structure (docs/style.md), so its
    generator draws it from the content loss alone: on real CT that erased the heart for the U-Net
    (BENCHMARKS.md, "Session 23")."""
    def values(x: np.ndarray) -> set[int]:  # a count per label value: one pass, no sort of the whole source stack
        return set(np.flatnonzero(np.bincount(np.asarray(x).ravel())).tolist())

    present = values(labels)
    return [[n for n in schema.names if schema.value(n) in present - here]
            for here in map(values, style_labels)]


#: an absent segment borrows the texture of a present one whose source mean HU lies within this distance
BORROW_HU = 200.0


def source_means(images: np.ndarray, labels: np.ndarray, num_classes: int, max_slices: int = 64) -> np.ndarray:
    """Mean HU of every segment over the source slices (NaN where a segment never occurs); at most ``max_slices``
    evenly spaced slices are read (a mean needs no more)."""
    step = max(1, len(images) // max_slices)
    lab = np.asarray(labels[::step]).ravel()
    sums = np.bincount(lab, weights=np.asarray(images[::step], np.float64).ravel(), minlength=num_classes)
    counts = np.bincount(lab, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts)[:num_classes]


def fill_absent(targets: StyleTargets, means: torch.Tensor, style_labels: list[np.ndarray], images: np.ndarray,
                labels: np.ndarray) -> tuple[StyleTargets, torch.Tensor, list[tuple[int, int, int]]]:
    """Complete the targets of the segments that the source holds and a style slice does not.

    Without a target such a segment would get no style texture (eq. 1 sums over segments present in both slices)
    and the residual generator's intensity prior for it would be 0 HU: on real CT a contrast-enhanced heart became
    a 0 HU blob in three styles of four, and a U-Net trained on them lost the heart (BENCHMARKS.md, "Session 24").
    Here, per style slice ``s`` and absent segment ``k``:

    - the mean HU target of ``k`` is the source's own mean of ``k`` (the style slice cannot say how bright a
      structure it does not show is; the source's anatomy can);
    - the Gram targets of ``k`` are borrowed from the segment ``j`` of the same style slice with the largest area
      among those whose source mean lies within :data:`BORROW_HU` of ``k``'s (else the one nearest in source mean):
      the same scanner noise and kernel on tissue of a similar density (heart -> body, one lung -> the other).

    ``images``, ``labels``: the source slices (N, H, W). Returns the completed targets and means and the (style,
    absent segment, lender) triples."""
    present = targets.present.clone()
    src_means = source_means(images, labels, present.shape[1])
    grams = {n: g.clone() for n, g in targets.grams.items()}
    means = means.clone()
    borrowed: list[tuple[int, int, int]] = []
    for s, lab in enumerate(style_labels):
        area = np.bincount(np.asarray(lab).ravel(), minlength=present.shape[1])[:present.shape[1]]
        have = [j for j in range(1, present.shape[1]) if bool(present[s, j]) and np.isfinite(src_means[j])]
        for k in range(1, present.shape[1]):
            if bool(present[s, k]) or not np.isfinite(src_means[k]) or not have:
                continue
            near = [j for j in have if abs(src_means[j] - src_means[k]) <= BORROW_HU]
            j = (max(near, key=lambda i: (area[i], -i)) if near
                 else min(have, key=lambda i: (abs(src_means[i] - src_means[k]), i)))
            for g in grams.values():
                g[s, k] = g[s, j]
            means[s, k] = float(src_means[k])
            present[s, k] = True
            borrowed.append((s, k, j))
    return StyleTargets(grams, present), means, borrowed
