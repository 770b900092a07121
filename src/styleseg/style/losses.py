"""Segment-wise style and content losses on VGG-19 features (paper eqs. 1 and 2; Gatys et al. 2016).

Notation (paper sec. 2.2): R is the generated slice, S the style slice, O the original source slice whose
label map is the generator's input. A segment sg is one label value (the schema's structures, body and
background); ``F^l`` is the (N_l channels x M_l positions) feature matrix of layer l restricted to the
segment, and ``G = F F^T`` its Gram matrix.

- Style, eq. (1): ``L_s = sum_sg sum_l w_l / (4 N_l^2 M_l^2) ||G(R_sg^l) - G(S_sg^l)||_F^2``.
- Content, eq. (2): ``L_c = sum_sg sum_l 1 / (2 N_l M_l) ||R_sg^l - O_sg^l||^2``.

R and S have *different* anatomies: R has the source slice's label map, S its own. The Gram targets of
segment sg come from S's mask of sg, the generated features are masked with the source label map. So
the two sides of eq. (1) generally have different M_l; we normalise each Gram by its own mask area
(:func:`gram` returns ``G / M``), which makes eq. (1) ``1/(4 N^2) ||G_R/M_R - G_S/M_S||^2`` and equals
the paper's expression exactly when ``M_R = M_S``. Masks are resized to each layer's resolution by
area averaging (soft masks in [0, 1]; a position's weight is the fraction of it inside the segment).
A segment absent from R's or S's label map contributes nothing.

All functions are pure (no state, no parameters) and work on batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


def segment_masks(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer label maps (B, H, W) -> float one-hot masks (B, K, H, W), K = ``num_classes``."""
    if label.ndim != 3:
        raise ValueError(f"label must be (B, H, W), got {tuple(label.shape)}")
    return F.one_hot(label.long(), num_classes).permute(0, 3, 1, 2).float()


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average masks (B, K, H, W) to a layer's (H_l, W_l); identity when the size already matches."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="area")


def gram(features: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Mask-restricted, area-normalised Gram matrix ``G / M`` of a feature map.

    features: (B, C, H, W); mask: None (whole map), (B, 1, H', W') or (B, H', W') with values in [0, 1]
    at any resolution (area-resized to (H, W)). Returns (B, C, C) = sum_p m_p f_p f_p^T / sum_p m_p
    (zeros for an empty mask).
    """
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    if mask is None:
        return f @ f.transpose(1, 2) / float(h * w)
    if mask.ndim == 3:
        mask = mask[:, None]
    m = resize_mask(mask.to(features.dtype), (h, w)).reshape(b, 1, h * w)
    area = m.sum(dim=2, keepdim=True)  # (B, 1, 1)
    return (f * m) @ f.transpose(1, 2) / area.clamp_min(eps)


def segment_grams(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grams of every segment: features (B, C, H, W), masks (B, K, H', W') -> ((B, K, C, C), areas (B, K)),
    the areas counted at the layer's resolution (M_l).

    Each segment's Gram is computed on its support only: the positions with a non-zero (area-resized) mask
    weight are gathered and multiplied, so the K segments of a slice together cost about one whole-map Gram
    (segments are disjoint; only boundary positions of the coarser layers belong to more than one), where
    masking the whole map once per segment costs K of them. Equal to :func:`gram` per segment up to float
    rounding (tests)."""
    b, c, h, w = features.shape
    m = resize_mask(masks.to(features.dtype), (h, w)).reshape(b, -1, h * w)  # (B, K, P)
    k = m.shape[1]
    areas = m.sum(dim=2)
    sel = m > 0
    counts = sel.sum(dim=2).reshape(-1).tolist()  # one host sync per layer
    rows, pos = torch.nonzero(sel.reshape(b * k, h * w), as_tuple=True)  # sorted by (b, k), then position
    fb = rows // k
    points = features.reshape(b, c, h * w).transpose(1, 2).reshape(b * h * w, c)[fb * (h * w) + pos]  # (N, C)
    weights = m.reshape(b * k, h * w)[rows, pos]
    zero = features.new_zeros(c, c)
    flat_areas = areas.reshape(-1)
    grams = []
    # split, not slicing: the backward of one split is one concatenation, of each slice a full-size zero tensor
    for i, (p, wt) in enumerate(zip(points.split(counts), weights.split(counts), strict=True)):
        grams.append((p * wt[:, None]).transpose(0, 1) @ p / flat_areas[i] if counts[i] else zero)
    return torch.stack(grams).reshape(b, k, c, c), areas


@dataclass(frozen=True)
class StyleTargets:
    """Gram targets of a style slice, computed once: ``grams[layer]`` (S, K, C, C) and ``present`` (S, K)
    (segment k appears in style slice s). S = number of style slices (1 for a single style)."""

    grams: Mapping[str, torch.Tensor]
    present: torch.Tensor

    def select(self, index: torch.Tensor) -> StyleTargets:
        """Per-batch-element targets for style indices ``index`` (B,) (conditional generator)."""
        return StyleTargets({k: v[index] for k, v in self.grams.items()}, self.present[index])

    def to(self, device: torch.device | str) -> StyleTargets:
        return StyleTargets({k: v.to(device) for k, v in self.grams.items()}, self.present.to(device))


def style_targets(feats_style: Mapping[str, torch.Tensor], masks_style: torch.Tensor,
                  layers: Sequence[str]) -> StyleTargets:
    """Gram targets G(S_sg^l) of style slices: features {layer: (S, C, H, W)}, masks (S, K, H, W) from the
    style slices' own label maps."""
    grams = {}
    for layer in layers:
        grams[layer] = segment_grams(feats_style[layer].detach(), masks_style)[0].detach()
    present = masks_style.flatten(2).sum(dim=2) > 0
    return StyleTargets(grams, present)


def segment_style_loss(feats_gen: Mapping[str, torch.Tensor], masks_gen: torch.Tensor, targets: StyleTargets,
                       layers: Sequence[str], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Eq. (1): sum over segments present in both R and S and over style layers of
    ``w_l / (4 N_l^2) ||G_R/M_R - G_S/M_S||_F^2``, averaged over the batch.

    feats_gen: {layer: (B, C, H, W)} of R; masks_gen: (B, K, H, W) from the *source* label map;
    targets: from the style slice(s), with a leading dimension of 1 (broadcast) or B.
    """
    weights = [1.0] * len(layers) if weights is None else list(weights)
    if len(weights) != len(layers):
        raise ValueError("one weight per style layer is needed")
    b = masks_gen.shape[0]
    present_gen = masks_gen.flatten(2).sum(dim=2) > 0  # (B, K)
    present = (present_gen & targets.present.expand(b, -1)).to(masks_gen.dtype)  # (B, K)
    total = masks_gen.new_zeros(())
    for layer, wl in zip(layers, weights, strict=True):
        g, _ = segment_grams(feats_gen[layer], masks_gen)  # (B, K, C, C)
        t = targets.grams[layer].expand_as(g)
        n = g.shape[-1]
        per_seg = ((g - t) ** 2).sum(dim=(-1, -2)) / (4.0 * n * n)  # (B, K)
        total = total + wl * (per_seg * present).sum(dim=1).mean()
    return total


def segment_content_loss(feats_gen: Mapping[str, torch.Tensor], feats_orig: Mapping[str, torch.Tensor],
                         masks: torch.Tensor, layers: Sequence[str], eps: float = 1e-8) -> torch.Tensor:
    """Eq. (2): sum over segments and content layers of ``1/(2 N_l M_l) sum_p m_p ||r_p - o_p||^2``,
    averaged over the batch. R and O share the label map, so one set of masks (B, K, H, W) serves both;
    M_l is the (soft) mask area at layer l; empty segments contribute nothing."""
    total = masks.new_zeros(())
    for layer in layers:
        r, o = feats_gen[layer], feats_orig[layer].detach()
        b, n, h, w = r.shape
        m = resize_mask(masks.to(r.dtype), (h, w))  # (B, K, h, w)
        sq = ((r - o) ** 2).sum(dim=1, keepdim=True)  # (B, 1, h, w)
        num = (sq * m).flatten(2).sum(dim=2)  # (B, K)
        area = m.flatten(2).sum(dim=2)
        per_seg = torch.where(area > eps, num / (2.0 * n * area.clamp_min(eps)), torch.zeros_like(num))
        total = total + per_seg.sum(dim=1).mean()
    return total


def segment_mean_loss(hu_gen: torch.Tensor, masks_gen: torch.Tensor, target_means: torch.Tensor,
                      target_present: torch.Tensor, scale: float = 100.0, eps: float = 1e-8) -> torch.Tensor:
    """Beyond the paper: squared error of each segment's mean HU against the style slice's, in units of
    ``scale`` HU. The VGG losses see only the soft-tissue window (clamped), so lungs (-850 HU) and bone
    would otherwise have no intensity target at all. hu_gen (B, 1, H, W); target_means (B or 1, K)."""
    b = masks_gen.shape[0]
    m = masks_gen.to(hu_gen.dtype)
    area = m.flatten(2).sum(dim=2)
    mean = (hu_gen * m).flatten(2).sum(dim=2) / area.clamp_min(eps)
    use = ((area > eps) & target_present.expand(b, -1)).to(hu_gen.dtype)
    return ((((mean - target_means.expand(b, -1)) / scale) ** 2) * use).sum(dim=1).mean()


# --- beyond the paper: a noise-power-spectrum (NPS) texture term ------------------------------------------
#
# Eq. (1) compares VGG Gram statistics of whole segments, which mix the style slice's noise with its within-
# segment anatomy (bone, fat, vessels inside "body"); a generator that sees only label maps can meet that
# only with extra noise-like structure, and in our measurements the texture drifted *away* from the style
# (docs/results-style.md). The NPS term anchors the CT-physics definition of texture directly: the radial
# NPS of the generated slice in soft tissue against the style slice's, in log10 (decades), with the same
# estimator as the texture metric (``texture.slice_nps``: high-pass residual, sigma 3 px; mean-detrended
# square ROIs; radial average; frequencies where the high-pass gain is < 0.5 excluded).

NPS_SIGMA_PX = 3.0


def _gauss_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = int(round(4 * sigma))
    x = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def highpass(x: torch.Tensor, sigma: float = NPS_SIGMA_PX) -> torch.Tensor:
    """``x - G_sigma * x`` for (B, 1, H, W): separable Gaussian truncated at 4 sigma (as ``scipy.ndimage.
    gaussian_filter``), reflect padding (scipy reflects about the edge, torch about the edge pixel: the two
    differ only within 4 sigma of the image border)."""
    k = _gauss_kernel(sigma, x.device, x.dtype)
    r = (k.numel() - 1) // 2
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x - y


def radial_bins(n: int, sigma: float = NPS_SIGMA_PX, min_gain: float = 0.5,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Radial averaging matrix (n*n, nb) for an n x n power spectrum (annuli of width 1/n cycles/px, up to
    Nyquist, as ``texture.radial_nps``) and the mask (nb,) of bins where the high-pass gain
    ``(1 - exp(-2 (pi sigma f)^2))^2`` is >= ``min_gain`` (the bins the texture metric trusts)."""
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    fr = torch.hypot(f[:, None], f[None, :]).reshape(-1)
    idx = torch.round(fr * n).long()
    nb = n // 2 + 1
    sel = idx < nb
    m = torch.zeros(n * n, nb, dtype=torch.float64)
    m[torch.nonzero(sel)[:, 0], idx[sel]] = 1.0
    m = m / m.sum(0, keepdim=True).clamp_min(1.0)
    freq = torch.arange(nb, dtype=torch.float64) / n
    gain = (1 - torch.exp(-2 * (torch.pi * sigma * freq) ** 2)) ** 2
    valid = gain >= min_gain
    valid[0] = False
    return m.float().to(device), valid.to(device)


def roi_radial_power(rois: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Mean radial power spectrum (nb,) of high-pass ROIs (N, n, n): mean-detrended, ``|DFT|^2 / n^2``
    (HU^2 per unit frequency area at 1 px spacing), radially averaged with ``bins`` from :func:`radial_bins`."""
    n = rois.shape[-1]
    r = rois - rois.mean(dim=(-2, -1), keepdim=True)
    ps = torch.fft.fft2(r.float()).abs() ** 2 / float(n * n)
    return (ps.reshape(ps.shape[0], -1) @ bins).mean(0)


def soft_tissue_windows(label: torch.Tensor, classes: Sequence[int], roi: int, erode: int = 3) -> torch.Tensor:
    """(B, H-roi+1, W-roi+1) bool: ROI corners whose roi x roi window lies entirely inside ONE of the
    segments ``classes`` eroded by ``erode`` px (so the high-pass of a neighbouring segment's edge stays out)."""
    ok = None
    for c in classes:
        m = (label == c).float()[:, None]
        if erode:
            m = 1.0 - F.max_pool2d(1.0 - m, 2 * erode + 1, stride=1, padding=erode)
        inside = F.avg_pool2d(m, roi, stride=1) > 0.999
        ok = inside if ok is None else ok | inside
    if ok is None:
        return torch.zeros(label.shape[0], label.shape[1] - roi + 1, label.shape[2] - roi + 1, dtype=torch.bool,
                           device=label.device)
    return ok[:, 0]


def nps_texture_loss(hu_gen: torch.Tensor, label: torch.Tensor, target_log_nps: torch.Tensor, classes: Sequence[int],
                     bins: torch.Tensor, valid: torch.Tensor, roi: int = 24, rois_per_image: int = 4,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Squared log10 distance (decades^2, averaged over the trusted bins) between the radial NPS of the
    generated slices' soft tissue and the style's (``target_log_nps``: (nb,) or (B, nb) per element).

    The generated slice's segment means are subtracted before the high-pass (they are exactly the style's
    means by construction, and their steps at segment edges are not texture); up to ``rois_per_image``
    random ROIs per slice inside one soft-tissue segment (``classes``, eroded 3 px). Slices with no such
    window contribute nothing (0 when none has one)."""
    b = hu_gen.shape[0]
    k = int(label.max().item()) + 1
    m = F.one_hot(label.long(), k).permute(0, 3, 1, 2).to(hu_gen.dtype)
    seg_mean = (hu_gen * m).flatten(2).sum(2) / m.flatten(2).sum(2).clamp_min(1.0)
    flat = hu_gen - torch.gather(seg_mean, 1, label.long().flatten(1)).reshape(hu_gen.shape)
    resid = highpass(flat.float())[:, 0]
    windows = soft_tissue_windows(label, classes, roi)
    tgt = target_log_nps.expand(b, -1) if target_log_nps.ndim == 1 else target_log_nps
    losses = []
    for i in range(b):
        ys, xs = torch.nonzero(windows[i], as_tuple=True)
        if len(ys) == 0:
            continue
        pick = torch.randperm(len(ys), generator=generator)[:rois_per_image].to(ys.device)
        rois = torch.stack([resid[i, y:y + roi, x:x + roi] for y, x in zip(ys[pick].tolist(), xs[pick].tolist(),
                                                                             strict=True)])
        logp = torch.log10(roi_radial_power(rois, bins) + 1e-6)
        losses.append(((logp - tgt[i]) ** 2)[valid].mean())
    if not losses:
        return hu_gen.new_zeros(())
    return torch.stack(losses).mean()


def style_log_nps(hu: np.ndarray, label: np.ndarray, bins: torch.Tensor, roi: int = 24) -> torch.Tensor | None:
    """The target of :func:`nps_texture_loss` for one style slice: log10 radial power of the high-pass
    residual in its near-uniform soft-tissue ROIs (``texture.soft_tissue_rois``, the texture metric's ROI
    choice), or None when the slice has none."""
    from styleseg.texture import soft_tissue_rois

    rois = soft_tissue_rois(np.asarray(hu, np.float64), np.asarray(label) > 0, roi=roi)
    if not rois:
        return None
    return torch.log10(roi_radial_power(torch.from_numpy(np.stack(rois)).float(), bins.cpu()) + 1e-6)


# --- the generator's objective ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NpsTargets:
    """Per-style log10 radial NPS targets (S, nb), which styles have one (S,), and the estimator's bins."""

    log_nps: torch.Tensor
    has: torch.Tensor
    bins: torch.Tensor
    valid: torch.Tensor
    classes: tuple[int, ...]
    roi: int

    def take(self, k: int) -> NpsTargets:
        return NpsTargets(self.log_nps[k:k + 1], self.has[k:k + 1], self.bins, self.valid, self.classes, self.roi)


@dataclass(frozen=True)
class GeneratorLoss:
    """What a style generator minimises: ``alpha`` x content (eq. 2) + ``beta`` x style (eq. 1), plus two terms
    beyond the paper, ``gamma`` x segment mean HU (:func:`segment_mean_loss`) and ``nps_weight`` x NPS texture
    (:func:`nps_texture_loss`). Kept apart from the training loop (as StyleGAN2-ADA keeps ``loss.py``), so the
    loop only feeds it features and targets."""

    alpha: float = 1.0
    beta: float = 10.0
    gamma: float = 10.0
    nps_weight: float = 100.0
    content_layers: tuple[str, ...] = ("relu2_1",)
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1")
    style_weights: tuple[float, ...] = (1.0, 1.0)
    nps_rois_per_image: int = 4

    def __call__(self, feats_gen: Mapping[str, torch.Tensor], feats_orig: Mapping[str, torch.Tensor],
                 hu_gen: torch.Tensor, label: torch.Tensor, masks: torch.Tensor, targets: StyleTargets,
                 means: torch.Tensor, style: torch.Tensor, nps: NpsTargets | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total, parts) for generated slices ``hu_gen`` (B, 1, H, W) of label maps ``label`` (B, H, W)
        (``masks``: their one-hot (B, K, H, W)); ``targets``/``means``: the style targets per batch element;
        ``style`` (B,): each element's style index into ``nps``."""
        lc = segment_content_loss(feats_gen, feats_orig, masks, self.content_layers)
        ls = segment_style_loss(feats_gen, masks, targets, self.style_layers, self.style_weights)
        lm = segment_mean_loss(hu_gen.float(), masks, means, targets.present)
        total = self.alpha * lc + self.beta * ls + self.gamma * lm
        ln = hu_gen.new_zeros((), dtype=torch.float32)
        if nps is not None and self.nps_weight > 0:
            use = nps.has[style]
            if bool(use.any()):
                ln = nps_texture_loss(hu_gen[use].float(), label[use], nps.log_nps[style[use]], nps.classes, nps.bins,
                                      nps.valid, nps.roi, self.nps_rois_per_image, generator)
                total = total + self.nps_weight * ln
        return total, {"content": lc, "style": ls, "mean_hu": lm, "nps": ln}
