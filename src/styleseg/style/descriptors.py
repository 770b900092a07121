"""Texture descriptors of CT slices and the clustering that picks style slices from them (``style.select``).

- NPS descriptors (:mod:`styleseg.texture`, ICRU Report 87) of soft tissue and of lung/air;
- VGG-19 Gram statistics: the log variance of low-layer activations in the soft tissue, the features the
  generator's style loss (eq. 1) matches;
- block standardisation, PCA and k-medoids (PAM: BUILD + SWAP, Kaufman & Rousseeuw 1990).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# --- NPS descriptors (styleseg.texture) -----------------------------------------------------------
def _region_rois(hu: np.ndarray, region: np.ndarray, r: int) -> np.ndarray:
    """(M, r, r) ROIs (stride r/2) lying fully inside ``region``."""
    from numpy.lib.stride_tricks import sliding_window_view

    s = max(r // 2, 1)
    win = sliding_window_view(region, (r, r))[::s, ::s]
    ok = win.all(axis=(2, 3))
    rois = sliding_window_view(hu, (r, r))[::s, ::s][ok]
    return np.asarray(rois, np.float64)


def region_descriptor(hu: np.ndarray, region: np.ndarray, r: int = 32) -> np.ndarray:
    """NPS descriptor of an arbitrary region (e.g. lung/air), in the format of
    :func:`styleseg.texture.texture_descriptor` (which covers soft tissue): ``[log10 std, mean f / Nyquist,
    peak f / Nyquist, log10 radial NPS at N_DESCRIPTOR_BINS frequencies]``, per pixel.

    ROIs fully inside ``region`` (half size if fewer than 4 fit) are detrended (2nd-order polynomial,
    ICRU 87); the half with the lowest residual std is kept (rejects ROIs crossing a vessel or an edge).
    NaNs when no ROI fits.
    """
    from styleseg.texture import N_DESCRIPTOR_BINS, detrend_poly2, nps_2d, radial_nps, resample_radial

    rois = _region_rois(hu, region, r)
    if len(rois) < 4 and r >= 16:
        rois = _region_rois(hu, region, r // 2)
    if len(rois) == 0:
        return np.full(3 + N_DESCRIPTOR_BINS, np.nan)
    res = detrend_poly2(rois)
    sd = res.std(axis=(1, 2))
    nps2d, f = nps_2d(res[sd <= np.median(sd)], 1.0, detrend="none")
    rad = radial_nps(nps2d, f, int((sd <= np.median(sd)).sum()))
    grid = np.linspace(0.5 / N_DESCRIPTOR_BINS, 0.5, N_DESCRIPTOR_BINS)
    prof = np.log10(resample_radial(rad, grid) + 1e-6)
    return np.concatenate([[np.log10(rad.std + 1e-6), rad.mean_freq / 0.5, rad.peak_freq / 0.5], prof])


def slice_descriptor(hu: np.ndarray, body: np.ndarray, r: int = 32) -> np.ndarray:
    """NPS features of a slice: soft tissue (:func:`styleseg.texture.texture_descriptor` inside the body)
    and lung/air (:func:`region_descriptor`)."""
    from styleseg.texture import texture_descriptor

    st = np.asarray(texture_descriptor(hu, body), np.float64)
    return np.concatenate([st, region_descriptor(hu, slice_regions(hu, body)["air"], r)])


def slice_regions(hu: np.ndarray, body: np.ndarray) -> dict[str, np.ndarray]:
    """Soft-tissue and lung/air masks inside the body, eroded so ROIs stay away from boundaries."""
    from scipy import ndimage as ndi

    st = ndi.binary_erosion(body & (hu > -150) & (hu < 250), iterations=2)
    air = ndi.binary_erosion(body & (hu < -500), iterations=2)
    return {"soft_tissue": st, "air": air}


# --- VGG Gram descriptors --------------------------------------------------------------------------
def central_crop(a: np.ndarray, centre: tuple[int, int], size: int) -> tuple[slice, slice]:
    h, w = a.shape
    sh, sw = min(size, h), min(size, w)
    y0 = int(np.clip(centre[0] - sh // 2, 0, h - sh))
    x0 = int(np.clip(centre[1] - sw // 2, 0, w - sw))
    return slice(y0, y0 + sh), slice(x0, x0 + sw)


def gram_features(hus: Sequence[np.ndarray], bodies: Sequence[np.ndarray], layers: Sequence[str], crop: int,
                  weights: str | None = None, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Log centred Gram diagonals of VGG-19 low layers: per channel, the variance of the activation
    over ``masks`` (default: the body; selection passes the soft tissue), on a crop of ``crop``
    px around the body's centre in the soft-tissue window W400/L40; (N, sum of channels).

    Centring matters: the raw Gram diagonal E[F^2] is dominated by the mean activation (the tissue's
    HU), while the variance carries the texture that the style loss (eq. 1) transfers."""
    import torch
    from torch.nn import functional as F

    from styleseg.data.slices import window
    from styleseg.style.vgg import VGG19Features

    vgg = VGG19Features(weights=weights, layers=tuple(layers))
    out = []
    with torch.no_grad():
        for i, (hu, body) in enumerate(zip(hus, bodies, strict=True)):
            region = body if masks is None or not masks[i].any() else masks[i]
            ys, xs = np.nonzero(body)
            c = (int(ys.mean()), int(xs.mean())) if len(ys) else (hu.shape[0] // 2, hu.shape[1] // 2)
            sy, sx = central_crop(hu, c, crop)
            x = torch.from_numpy(window(hu[sy, sx], 40.0, 400.0))[None, None]
            m = torch.from_numpy(region[sy, sx].astype(np.float32))[None, None]
            feats = vgg(x)
            row = []
            for name in layers:
                fm = feats[name][0]
                mm = F.interpolate(m, size=fm.shape[-2:], mode="area")[0, 0] > 0.5
                if not mm.any():
                    mm = torch.ones_like(mm)
                row.append(torch.log(fm[:, mm].var(1, unbiased=False) + 1e-6).numpy())
            out.append(np.concatenate(row))
    return np.stack(out)


# --- clustering ------------------------------------------------------------------------------------
def standardise_blocks(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """z-score each column (NaN -> 0), then weight each block by 1/sqrt(columns) so every block
    carries the same total variance whatever its size."""
    parts = []
    for b in blocks:
        b = np.asarray(b, np.float64)
        ok = ~np.isnan(b).all(0)
        mu = np.zeros(b.shape[1])
        sd = np.zeros(b.shape[1])
        mu[ok] = np.nanmean(b[:, ok], 0)
        sd[ok] = np.nanstd(b[:, ok], 0)
        z = np.where(sd > 1e-9, (b - mu) / np.where(sd > 1e-9, sd, 1.0), 0.0)
        parts.append(np.nan_to_num(z) / np.sqrt(b.shape[1]))
    return np.concatenate(parts, 1)


def pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores on the first ``k`` principal components and the explained-variance ratios."""
    xc = x - x.mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    k = max(1, min(k, len(s)))
    var = s ** 2 / max((s ** 2).sum(), 1e-12)
    return u[:, :k] * s[:k], var[:k]


def _swap(d: np.ndarray, med: np.ndarray) -> tuple[np.ndarray, float]:
    """PAM SWAP: exchange a medoid with a non-medoid while the total distance decreases."""
    n, k = len(d), len(med)
    ar = np.arange(n)
    while True:
        dm = d[:, med]
        order = np.argsort(dm, 1, kind="stable")
        d1 = dm[ar, order[:, 0]]
        d2 = dm[ar, order[:, 1]] if k > 1 else np.full(n, np.inf)
        cost = d1.sum()
        best = (-1e-9 * max(cost, 1.0), -1, -1)
        for i in range(k):
            base = np.where(order[:, 0] == i, d2, d1)
            delta = np.minimum(base[None, :], d).sum(1) - cost
            delta[med] = np.inf
            h = int(np.argmin(delta))
            if delta[h] < best[0]:
                best = (float(delta[h]), i, h)
        if best[1] < 0:
            return med, float(cost)
        med = med.copy()
        med[best[1]] = best[2]


def kmedoids(x: np.ndarray, k: int, seed: int = 0, restarts: int = 8) -> tuple[np.ndarray, np.ndarray, float]:
    """k-medoids (PAM BUILD + SWAP, plus ``restarts`` seeded random starts) on Euclidean distances.

    Returns (medoid indices, cluster label per point, total distance). Deterministic for a seed.
    """
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of points ({n})")
    d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    med = [int(np.argmin(d.sum(1)))]  # BUILD
    while len(med) < k:
        cur = d[:, med].min(1)
        gain = np.maximum(cur[None, :] - d, 0).sum(1)
        gain[med] = -1
        med.append(int(np.argmax(gain)))
    best_med, best_cost = _swap(d, np.array(med))
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        m, c = _swap(d, rng.choice(n, k, replace=False))
        if c < best_cost - 1e-9:
            best_med, best_cost = m, c
    labels = np.argmin(d[:, best_med], 1)
    return best_med, labels, best_cost


