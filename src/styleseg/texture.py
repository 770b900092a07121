"""Noise power spectrum (NPS) and texture statistics: the CT-physics way to say "texture".

Definitions follow ICRU Report 87 (2012) and Boedeker et al., Phys. Med. Biol. 52:4027 (2007)::

    NPS(fx, fy) = dx * dy / (Nx * Ny) * < |DFT2(roi - trend)|^2 >      [HU^2 mm^2]

averaged over ROIs (or realisations), with ``trend`` a 2nd-order polynomial fitted to each ROI. The
integral of the NPS over frequency is the noise variance. The radial NPS averages the 2D NPS over
annuli of width ``1 / (N dx)``. Noise-only input can come from

- a noise-only image (``nps_2d``),
- the difference of two realisations of the same object (``nps_from_difference``: (a - b) / sqrt 2),
- near-uniform ROIs of an anatomical slice (``slice_nps``): ROIs inside soft tissue (optionally inside
  ``mask``) whose smoothed content is nearly flat, high-pass detrended (image minus a Gaussian blur, so
  anatomy is not mistaken for noise), with the high-pass response divided out where it is >= 0.5.

Texture distance (:func:`nps_distance`): the RMS difference of log10 radial NPS on a common frequency
grid (decades), over the frequencies both curves cover. Log space weighs a factor-2 change in noise
power the same at every frequency, so it captures both the noise magnitude (dose) and the shape
(kernel) of the NPS; it is symmetric and 0 only for equal curves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger("styleseg.texture")

N_DESCRIPTOR_BINS = 12
_EPS = 1e-6


@dataclass(frozen=True)
class RadialNPS:
    """A radial NPS: ``freq`` (cycles/mm; cycles/pixel when the spacing is 1) and ``nps`` (HU^2 mm^2),
    with the noise std (HU), the NPS-weighted mean frequency and the peak frequency."""

    freq: np.ndarray
    nps: np.ndarray
    std: float
    mean_freq: float
    peak_freq: float
    n_rois: int = 1
    extras: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"freq": [round(float(f), 5) for f in self.freq], "nps": [float(v) for v in self.nps],
                "std": self.std, "mean_freq": self.mean_freq, "peak_freq": self.peak_freq, "n_rois": self.n_rois}


def detrend_poly2(roi: np.ndarray) -> np.ndarray:
    """Subtract a least-squares 2nd-order 2D polynomial from each ROI (..., n, m)."""
    n, m = roi.shape[-2:]
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, m), indexing="ij")
    basis = np.stack([np.ones_like(xx), xx, yy, xx * yy, xx**2, yy**2], -1).reshape(-1, 6)
    flat = roi.reshape(-1, n * m).T
    coef, *_ = np.linalg.lstsq(basis, flat, rcond=None)
    return (flat - basis @ coef).T.reshape(roi.shape)


def nps_2d(noise: np.ndarray, spacing_mm: float = 1.0, detrend: str = "poly2") -> tuple[np.ndarray, np.ndarray]:
    """2D NPS (fftshifted, HU^2 mm^2) of noise ROIs (n, m) or (k, n, m), averaged; and the frequency
    axis (cycles/mm) shared by both dimensions (square ROIs)."""
    rois = np.asarray(noise, np.float64)
    if rois.ndim == 2:
        rois = rois[None]
    if rois.shape[-1] != rois.shape[-2]:
        raise ValueError(f"NPS needs square ROIs, got {rois.shape[-2:]}")
    if detrend == "poly2":
        rois = detrend_poly2(rois)
    elif detrend == "mean":
        rois = rois - rois.mean(axis=(-2, -1), keepdims=True)
    elif detrend != "none":
        raise ValueError(f"detrend must be 'poly2', 'mean' or 'none', got {detrend!r}")
    n = rois.shape[-1]
    ps = np.abs(np.fft.fft2(rois)) ** 2
    nps = np.fft.fftshift(ps.mean(0)) * spacing_mm**2 / (n * n)
    return nps, np.fft.fftshift(np.fft.fftfreq(n, d=spacing_mm))


def radial_nps(nps2d: np.ndarray, freq: np.ndarray, n_rois: int = 1) -> RadialNPS:
    """Radially average a 2D NPS (annuli of width 1/(N dx), up to Nyquist) and compute its statistics."""
    df = float(freq[1] - freq[0])
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    fr = np.hypot(fx, fy)
    nyq = float(np.abs(freq).max())
    idx = np.rint(fr / df).astype(int)
    nb = int(np.rint(nyq / df)) + 1
    sel = idx < nb
    sums = np.bincount(idx[sel], nps2d[sel], minlength=nb)
    counts = np.bincount(idx[sel], minlength=nb)
    rad = sums / np.maximum(counts, 1)
    f = np.arange(nb) * df
    var = float(nps2d.sum() * df * df)
    tot = float(nps2d[sel].sum())
    mean_f = float((fr[sel] * nps2d[sel]).sum() / tot) if tot > 0 else 0.0
    peak = float(f[1:][np.argmax(rad[1:])]) if nb > 1 else 0.0
    return RadialNPS(f, rad, float(np.sqrt(max(var, 0.0))), mean_f, peak, n_rois)


def noise_nps(noise: np.ndarray, spacing_mm: float = 1.0, roi: int = 64, detrend: str = "poly2") -> RadialNPS:
    """Radial NPS of a noise-only image (or stack): tiled into ``roi`` x ``roi`` ROIs (half overlap)."""
    arr = np.asarray(noise, np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    roi = min(roi, arr.shape[-1], arr.shape[-2])
    step = max(roi // 2, 1)
    tiles = [a[i:i + roi, j:j + roi] for a in arr for i in range(0, a.shape[0] - roi + 1, step)
             for j in range(0, a.shape[1] - roi + 1, step)]
    nps2d, f = nps_2d(np.stack(tiles), spacing_mm, detrend)
    return radial_nps(nps2d, f, len(tiles))


def nps_from_difference(a: np.ndarray, b: np.ndarray, spacing_mm: float = 1.0, roi: int = 64,
                        mask: np.ndarray | None = None) -> RadialNPS:
    """NPS from two realisations of the same object: the object cancels in (a - b) / sqrt(2).

    With ``mask``, only ROIs entirely inside the mask are used.
    """
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) / np.sqrt(2.0)
    if mask is None:
        return noise_nps(d, spacing_mm, roi)
    rois = _rois_in_mask(d[None] if d.ndim == 2 else d, np.broadcast_to(mask, d.shape).reshape((-1,) + d.shape[-2:]),
                         roi)
    if not rois:
        raise ValueError(f"no {roi}x{roi} ROI fits inside the mask")
    nps2d, f = nps_2d(np.stack(rois), spacing_mm)
    return radial_nps(nps2d, f, len(rois))


def _rois_in_mask(stack: np.ndarray, masks: np.ndarray, roi: int) -> list[np.ndarray]:
    out = []
    step = max(roi // 2, 1)
    for a, m in zip(stack, masks, strict=True):
        inside = ndi.uniform_filter(m.astype(np.float32), roi, mode="constant")
        for i in range(0, a.shape[0] - roi + 1, step):
            for j in range(0, a.shape[1] - roi + 1, step):
                if inside[i + roi // 2, j + roi // 2] > 0.999:
                    out.append(a[i:i + roi, j:j + roi])
    return out


HIGHPASS_SIGMA_PX = 3.0
MIN_GAIN = 0.5


def soft_tissue_rois(hu: np.ndarray, mask: np.ndarray | None = None, roi: int = 32, max_rois: int = 24,
                     sigma_px: float = HIGHPASS_SIGMA_PX) -> list[np.ndarray]:
    """High-pass residual ROIs (``hu - G_sigma * hu``) of near-uniform soft tissue of an anatomical slice.

    ROIs lie inside soft tissue (HU smoothed at 4 px in [-200, 250], eroded 3 px, optionally inside
    ``mask``) away from edges (gradient of a 1.5-px smoothing above max(15 HU/px, 5 x its lower
    quartile), widened by 2 sigma); they are ranked by how flat the smoothed image is inside them (std
    after a poly2 fit) and accepted while that is below ``10 + 0.1 * noise`` HU (smoothing leaks some
    noise), at most half overlapping; ROIs whose residual std exceeds 1.25 x the median (anatomy
    leaking through) are dropped.
    """
    hu = np.asarray(hu, np.float64)
    smooth = ndi.gaussian_filter(hu, 4.0)
    resid = hu - ndi.gaussian_filter(hu, sigma_px)
    tissue = (smooth > -200) & (smooth < 250)
    if mask is not None:
        tissue &= np.asarray(mask, bool)
    tissue = ndi.binary_erosion(tissue, iterations=3)
    if not tissue.any():
        return []
    # edges of small structures (thin septa, vessel walls, rib cortex) that the 4-px smoothing hides:
    # gradient of a 1.5-px smoothing above max(15 HU/px, 5 x its lower quartile in tissue), widened by 2 sigma
    s15 = ndi.gaussian_filter(hu, 1.5)
    grad = np.hypot(ndi.sobel(s15, 0), ndi.sobel(s15, 1)) / 8.0
    edges = grad > max(15.0, 5.0 * float(np.percentile(grad[tissue], 25)))
    tissue &= ~ndi.binary_dilation(edges, iterations=int(round(2 * sigma_px)))
    if not tissue.any():
        return []
    noise = 1.4826 * float(np.median(np.abs(resid[tissue] - np.median(resid[tissue])))) / 0.7
    tol = 10.0 + 0.1 * noise
    inside = ndi.uniform_filter(tissue.astype(np.float32), roi, mode="constant")
    cands = []
    step = max(roi // 4, 2)
    for i in range(0, hu.shape[0] - roi + 1, step):
        for j in range(0, hu.shape[1] - roi + 1, step):
            if inside[i + roi // 2, j + roi // 2] > 0.999:
                cands.append((float(detrend_poly2(smooth[i:i + roi, j:j + roi]).std()), i, j))
    cands.sort()
    chosen: list[tuple[int, int]] = []
    for flat, i, j in cands:
        if flat > tol:
            break
        if all(abs(i - a) >= roi // 2 or abs(j - b) >= roi // 2 for a, b in chosen):
            chosen.append((i, j))
        if len(chosen) >= 3 * max_rois:
            break
    if len(chosen) >= 3:  # anatomy that leaks through makes a ROI an outlier: drop those
        sd = np.array([resid[i:i + roi, j:j + roi].std() for i, j in chosen])
        keep = sd <= 1.25 * np.median(sd)
        chosen = [c for c, k in zip(chosen, keep, strict=True) if k]
    return [resid[i:i + roi, j:j + roi] for i, j in chosen[:max_rois]]


def slice_nps(hu: np.ndarray, spacing_mm: float = 1.0, mask: np.ndarray | None = None, roi: int = 24,
              max_rois: int = 24, sigma_px: float = HIGHPASS_SIGMA_PX) -> RadialNPS:
    """Radial NPS of an anatomical slice from high-pass-detrended near-uniform soft-tissue ROIs.

    The high-pass (``1 - G``, Gaussian ``sigma_px``) removes anatomy; the radial NPS is divided by
    ``(1 - G(f))^2`` where that is >= MIN_GAIN, and below that frequency (``extras["valid_from"]``,
    cycles/mm) it falls linearly to 0 at DC (the ramp shape of FBP noise near DC), so anatomy that leaks
    through at low frequencies is not amplified. Falls back to half-size ROIs when no ROI fits; raises
    ValueError if none fits at all.
    """
    for size in (roi, roi // 2):
        rois = soft_tissue_rois(hu, mask, size, max_rois, sigma_px)
        if rois:
            nps2d, f = nps_2d(np.stack(rois), spacing_mm, "mean")
            r = radial_nps(nps2d, f, len(rois))
            sig_mm = sigma_px * spacing_mm
            gain = (1 - np.exp(-2 * (np.pi * sig_mm * r.freq) ** 2)) ** 2
            ok = gain >= MIN_GAIN
            first = max(int(np.argmax(ok)), 1)
            rad = r.nps / np.maximum(gain, MIN_GAIN)
            rad[:first] = rad[first] * r.freq[:first] / r.freq[first]  # CT noise NPS ~ ramp near DC
            var = float(np.trapezoid(2 * np.pi * r.freq * rad, r.freq))
            mean_f = float(np.trapezoid(2 * np.pi * r.freq**2 * rad, r.freq) / max(var, 1e-12))
            peak = float(r.freq[first:][np.argmax(rad[first:])])
            return RadialNPS(r.freq, rad, float(np.sqrt(max(var, 0.0))), mean_f, peak, len(rois),
                             {"valid_from": float(r.freq[first]), "method": "highpass-roi"})
    raise ValueError("no near-uniform soft-tissue ROI found in the slice (is it all air or lung?)")


def resample_radial(r: RadialNPS, freq: np.ndarray) -> np.ndarray:
    """The radial NPS interpolated on ``freq`` (linear in log NPS)."""
    return 10 ** np.interp(freq, r.freq, np.log10(np.maximum(r.nps, _EPS)))


def nps_distance(a: RadialNPS, b: RadialNPS, n: int = 32) -> float:
    """RMS difference of log10 radial NPS (decades) on a common grid over the shared frequency range,
    excluding the DC bin (detrending removes it) and bins below a curve's ``extras["valid_from"]``."""
    fmax = min(float(a.freq[-1]), float(b.freq[-1]))
    fmin = max(float(a.extras.get("valid_from", a.freq[min(1, len(a.freq) - 1)])),
               float(b.extras.get("valid_from", b.freq[min(1, len(b.freq) - 1)])))
    if fmax <= fmin:
        raise ValueError("the two NPS curves share no frequency range")
    grid = np.linspace(fmin, fmax, n)
    la, lb = np.log10(resample_radial(a, grid)), np.log10(resample_radial(b, grid))
    return float(np.sqrt(np.mean((la - lb) ** 2)))


def texture_descriptor(hu_slice: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """A fixed-length texture vector of a slice, for clustering slices by texture.

    ``[log10 noise std, mean freq / Nyquist, peak freq / Nyquist, log10 radial NPS at N_DESCRIPTOR_BINS
    frequencies in (0, 0.5] cycles/pixel]`` from :func:`slice_nps` with unit spacing (so slices with
    other pixel spacings are compared per pixel). A slice without any soft-tissue ROI falls back to the
    high-pass residual (image minus Gaussian sigma 2 px) inside the body.
    """
    hu = np.asarray(hu_slice, np.float64)
    try:
        r = slice_nps(hu, 1.0, mask)
    except ValueError:
        body = hu > -500 if mask is None else np.asarray(mask, bool) & (hu > -500)
        resid = hu - ndi.gaussian_filter(hu, 2.0)
        rois = _rois_in_mask(resid[None], body[None], 16) or [resid[:16, :16]]
        nps2d, f = nps_2d(np.stack(rois), 1.0, "mean")
        r = radial_nps(nps2d, f, len(rois))
    grid = np.linspace(0.5 / N_DESCRIPTOR_BINS, 0.5, N_DESCRIPTOR_BINS)
    prof = np.log10(resample_radial(r, grid) + _EPS)
    return np.concatenate([[np.log10(r.std + _EPS), r.mean_freq / 0.5, r.peak_freq / 0.5], prof]).astype(np.float32)
