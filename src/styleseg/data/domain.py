"""Intensity transforms of the comparison arms (issue 6): the cheap answers styleseg must beat.

Every transform is a pure function of a 2D HU slice (float) and a ``np.random.Generator``; the
callables are plain picklable classes, so a training loop (or its DataLoader workers) applies them
per crop: ``out = transform(hu_crop, rng)``. Inputs are never modified; outputs are float32 HU.

- arm 2, :class:`IntensityAugment`: nnU-Net v2's default intensity augmentation (Isensee et al.
  2021, nnU-Net; ``nnUNetTrainer.get_training_transforms``) with its probabilities.
- arm 3, :class:`HistogramMatch`: source slice histogram mapped onto a random target slice's
  (inside the body), by CDF matching (``skimage.exposure.match_histograms``).
- arm 4, :class:`FDA`: Fourier domain adaptation (Yang & Soatto 2020, CVPR, "FDA: Fourier Domain
  Adaptation for Semantic Segmentation", eq. 2): the low-frequency amplitude spectrum of the source
  is replaced by a target slice's, the phase is kept.
- arm 8, :func:`denoise` and :func:`tune_denoiser`: denoise-then-segment; the strength is tuned on a
  few target slices so their soft-tissue noise matches the source's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger("styleseg.data.domain")

HU_MIN, HU_MAX = -1024.0, 3071.0


def _f32(hu: np.ndarray) -> np.ndarray:
    a = np.asarray(hu, np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {a.shape}")
    return a


def _bg_contrast(rng: np.random.Generator, lo: float, hi: float) -> float:
    """nnU-Net's ``BGContrast`` sampling: half the time below 1, half the time above (if the range spans 1)."""
    if rng.random() < 0.5 and lo < 1:
        return float(rng.uniform(lo, 1.0))
    return float(rng.uniform(max(lo, 1.0), hi))


# --- arm 2: nnU-Net's default intensity augmentation ----------------------------------------------------


@dataclass(frozen=True)
class IntensityAugment:
    """nnU-Net v2 default intensity augmentation, applied to HU.

    nnU-Net works on z-scored CT (foreground mean/std); ``mean_hu``/``std_hu`` are those statistics
    in HU (measure them with :meth:`fit`), so every operation acts as it would in nnU-Net. In order:

    1. Gaussian noise, p=0.1: std ~ U(noise_std) x std_hu (nnU-Net's code draws the value it calls
       ``noise_variance`` from (0, 0.1) and uses it as the standard deviation; so do we).
    2. Gaussian blur, p=0.2 x 0.5 (per channel): sigma ~ U(0.5, 1) pixels, drawn per axis.
    3. Multiplicative brightness, p=0.15: (x - mean) * U_bg(0.75, 1.25) + mean.
    4. Contrast, p=0.15: (x - mean(x)) * U_bg(0.75, 1.25) + mean(x), clipped to the input's range.
    5. Low-resolution simulation, p=0.25 x 0.5: nearest-neighbour downsampling by U(0.5, 1), cubic
       upsampling back.
    6. Gamma on the inverted image, p=0.1, and 7. gamma, p=0.3: gamma ~ U_bg(0.7, 1.5) on the
       min-max normalised slice, mean and std restored afterwards.

    U_bg is nnU-Net's ``BGContrast`` draw (below or above 1 with equal probability).
    """

    mean_hu: float = -300.0
    std_hu: float = 400.0
    p_noise: float = 0.1
    noise_std: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.1
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_lowres: float = 0.125
    lowres_scale: tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)

    @classmethod
    def fit(cls, slices: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None = None,
            **overrides: Any) -> IntensityAugment:
        """Foreground HU statistics as nnU-Net computes them (labelled voxels; else HU > -950)."""
        vals = []
        for i, s in enumerate(slices):
            s = np.asarray(s, np.float32)
            m = (np.asarray(labels[i]) > 0) if labels is not None else (s > -950)
            vals.append(s[m])
        v = np.concatenate(vals) if vals else np.zeros(0)
        if v.size < 10:
            raise ValueError("too few foreground pixels to measure intensity statistics")
        lo, hi = np.percentile(v, [0.5, 99.5])  # nnU-Net clips to these before the z-score
        v = np.clip(v, lo, hi)
        return cls(mean_hu=float(v.mean()), std_hu=float(v.std()), **overrides)

    def plan(self, rng: np.random.Generator) -> list[tuple[str, dict[str, float]]]:
        """Draw which operations apply and their parameters (in nnU-Net's order)."""
        ops: list[tuple[str, dict[str, float]]] = []
        if rng.random() < self.p_noise:
            ops.append(("noise", {"std": float(rng.uniform(*self.noise_std)) * self.std_hu}))
        if rng.random() < self.p_blur:
            ops.append(("blur", {"sigma_y": float(rng.uniform(*self.blur_sigma)),
                                 "sigma_x": float(rng.uniform(*self.blur_sigma))}))
        if rng.random() < self.p_brightness:
            ops.append(("brightness", {"factor": _bg_contrast(rng, *self.brightness)}))
        if rng.random() < self.p_contrast:
            ops.append(("contrast", {"factor": _bg_contrast(rng, *self.contrast)}))
        if rng.random() < self.p_lowres:
            ops.append(("lowres", {"scale": float(rng.uniform(*self.lowres_scale))}))
        if rng.random() < self.p_gamma_inverted:
            ops.append(("gamma_inverted", {"gamma": _bg_contrast(rng, *self.gamma)}))
        if rng.random() < self.p_gamma:
            ops.append(("gamma", {"gamma": _bg_contrast(rng, *self.gamma)}))
        return ops

    def apply(self, hu: np.ndarray, ops: Sequence[tuple[str, dict[str, float]]],
              rng: np.random.Generator) -> np.ndarray:
        x = _f32(hu).copy()
        for name, p in ops:
            if name == "noise":
                x = x + rng.normal(0.0, p["std"], x.shape).astype(np.float32)
            elif name == "blur":
                x = ndi.gaussian_filter(x, (p["sigma_y"], p["sigma_x"]))
            elif name == "brightness":
                x = (x - self.mean_hu) * p["factor"] + self.mean_hu
            elif name == "contrast":
                lo, hi, mu = x.min(), x.max(), x.mean()
                x = np.clip((x - mu) * p["factor"] + mu, lo, hi)
            elif name == "lowres":
                x = _simulate_lowres(x, p["scale"])
            elif name in ("gamma", "gamma_inverted"):
                x = _gamma_retain_stats(-x if name == "gamma_inverted" else x, p["gamma"])
                x = -x if name == "gamma_inverted" else x
        return x.astype(np.float32)

    def __call__(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(hu, self.plan(rng), rng)


def _simulate_lowres(x: np.ndarray, scale: float) -> np.ndarray:
    small = tuple(max(1, int(round(s * scale))) for s in x.shape)
    down = ndi.zoom(x, [a / b for a, b in zip(small, x.shape, strict=True)], order=0, mode="nearest", grid_mode=True)
    return ndi.zoom(down, [a / b for a, b in zip(x.shape, down.shape, strict=True)], order=3, mode="nearest",
                    grid_mode=True)[: x.shape[0], : x.shape[1]].astype(np.float32)


def _gamma_retain_stats(x: np.ndarray, gamma: float, eps: float = 1e-7) -> np.ndarray:
    """batchgenerators' gamma: min-max normalise, power, rescale; then restore mean and std."""
    mu, sd = x.mean(), x.std()
    lo = x.min()
    rng_ = x.max() - lo
    y = np.power((x - lo) / (rng_ + eps), gamma) * rng_ + lo
    y = (y - y.mean()) / (y.std() + 1e-8) * sd + mu
    return y.astype(np.float32)


# --- arm 3: histogram matching ---------------------------------------------------------------------------


def body_mask_2d(hu: np.ndarray, threshold: float = -950.0, sigma: float = 2.0) -> np.ndarray:
    """Pixels inside the patient (lungs included): Gaussian-smoothed HU above ``threshold``.

    Smoothing first keeps noisy air pixels out; -950 HU keeps lung (about -850) in. Works on crops,
    unlike a largest-component body outline.
    """
    return ndi.gaussian_filter(_f32(hu), sigma) > threshold


class HistogramMatch:
    """Map a source slice's body histogram onto a randomly chosen target slice's (CDF matching).

    Only pixels inside the body (:func:`body_mask_2d`) are matched, on both sides, so the share of
    air in a crop or field of view does not distort the mapping; air outside the body is unchanged.
    """

    def __init__(self, target_slices: Sequence[np.ndarray], threshold: float = -950.0):
        self.threshold = float(threshold)
        self.targets: list[np.ndarray] = []
        for t in target_slices:
            t = _f32(t)
            v = t[body_mask_2d(t, threshold)]
            if v.size:
                self.targets.append(np.sort(v))
        if not self.targets:
            raise ValueError("no target slice has body pixels to match to")

    def __call__(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.match(hu, int(rng.integers(len(self.targets))))

    def match(self, hu: np.ndarray, target_index: int) -> np.ndarray:
        from skimage.exposure import match_histograms

        x = _f32(hu).copy()
        m = body_mask_2d(x, self.threshold)
        if m.any():
            x[m] = match_histograms(x[m], self.targets[target_index]).astype(np.float32)
        return x


# --- arm 4: Fourier domain adaptation ----------------------------------------------------------------------


def fda_transfer(src: np.ndarray, tgt: np.ndarray, beta: float) -> np.ndarray:
    """Yang & Soatto (2020) eq. 2: source phase with the target's amplitude inside the low-frequency window.

    The window is the centred square of half-width ``b = floor(beta * min(h, w))`` around DC (as in
    the authors' code, ``low_freq_mutate_np``); ``beta = 0`` is the identity, ``beta >= 0.5`` swaps
    the whole amplitude spectrum.
    """
    s, t = _f32(src).astype(np.float64), _f32(tgt).astype(np.float64)
    if s.shape != t.shape:
        raise ValueError(f"source {s.shape} and target {t.shape} must have the same shape")
    if beta < 0:
        raise ValueError("beta must be >= 0")
    if beta == 0:
        return s.astype(np.float32)
    fs, ft = np.fft.fftshift(np.fft.fft2(s)), np.fft.fftshift(np.fft.fft2(t))
    amp, pha = np.abs(fs), np.angle(fs)
    h, w = s.shape
    b = int(np.floor(min(h, w) * beta))
    ch, cw = h // 2, w // 2
    win = (slice(max(ch - b, 0), min(ch + b + 1, h)), slice(max(cw - b, 0), min(cw + b + 1, w)))
    amp[win] = np.abs(ft)[win]
    out = np.fft.ifft2(np.fft.ifftshift(amp * np.exp(1j * pha)))
    return np.real(out).astype(np.float32)


def random_crop_like(img: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``img`` with ``shape`` (reflect-padded first if ``img`` is smaller)."""
    a = _f32(img)
    ph, pw = max(0, shape[0] - a.shape[0]), max(0, shape[1] - a.shape[1])
    if ph or pw:
        a = np.pad(a, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")
    y = int(rng.integers(a.shape[0] - shape[0] + 1))
    x = int(rng.integers(a.shape[1] - shape[1] + 1))
    return a[y: y + shape[0], x: x + shape[1]]


class FDA:
    """Fourier domain adaptation with a random target slice; a random crop of it when sizes differ.

    Slices share the native pixel spacing, so a crop of a target slice has the target's texture at
    the source crop's size. ``beta`` is a number or a (low, high) range drawn per call (the paper
    uses 0.01-0.09). Output is clipped to the CT range [-1024, 3071] HU.
    """

    def __init__(self, target_slices: Sequence[np.ndarray], beta: float | tuple[float, float] = 0.01):
        self.targets = [_f32(t) for t in target_slices]
        if not self.targets:
            raise ValueError("FDA needs at least one target slice")
        self.beta = beta

    def __call__(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _f32(hu)
        t = self.targets[int(rng.integers(len(self.targets)))]
        beta = float(rng.uniform(*self.beta)) if isinstance(self.beta, tuple | list) else float(self.beta)
        tgt = t if t.shape == x.shape else random_crop_like(t, x.shape, rng)  # type: ignore[arg-type]
        return np.clip(fda_transfer(x, tgt, beta), HU_MIN, HU_MAX)


# --- arm 8: denoise-then-segment ---------------------------------------------------------------------------


def denoise(hu: np.ndarray, method: str = "gaussian", strength: float = 1.0) -> np.ndarray:
    """Smooth a slice: ``gaussian`` (sigma = strength, pixels) or ``nlm`` (non-local means, h = strength, HU).

    Non-local means: Buades et al. 2005 (skimage ``denoise_nl_means``, 5x5 patches, 13x13 search).
    Strength 0 returns a copy.
    """
    x = _f32(hu)
    if strength < 0:
        raise ValueError("strength must be >= 0")
    if strength == 0:
        return x.copy()
    if method == "gaussian":
        return ndi.gaussian_filter(x, float(strength)).astype(np.float32)
    if method == "nlm":
        from skimage.restoration import denoise_nl_means

        return denoise_nl_means(x.astype(np.float64), patch_size=5, patch_distance=6, h=float(strength),
                                fast_mode=True, preserve_range=True).astype(np.float32)
    raise ValueError(f"unknown denoising method {method!r}; use 'gaussian' or 'nlm'")


def soft_tissue_noise_std(hu: np.ndarray, window: int = 7, hu_range: tuple[float, float] = (-100.0, 200.0),
                          min_pixels: int = 50) -> float:
    """Median local standard deviation (``window`` x ``window``) over homogeneous soft tissue (HU).

    Soft tissue = pixels whose smoothed HU (sigma 2) lies in ``hu_range``, eroded by the window so
    edges do not count. NaN if fewer than ``min_pixels`` such pixels.
    """
    x = _f32(hu).astype(np.float64)
    sm = ndi.gaussian_filter(x, 2.0)
    m = (sm > hu_range[0]) & (sm < hu_range[1])
    m = ndi.binary_erosion(m, np.ones((window, window), bool))
    if m.sum() < min_pixels:
        return float("nan")
    mu = ndi.uniform_filter(x, window)
    var = np.maximum(ndi.uniform_filter(x * x, window) - mu * mu, 0.0)
    return float(np.median(np.sqrt(var[m])))


@dataclass(frozen=True)
class Denoiser:
    """A tuned denoiser (picklable): ``Denoiser("gaussian", 1.5)(hu)``; ``table`` = the tuning record."""

    method: str
    strength: float
    reference_std: float = float("nan")
    table: tuple[tuple[float, float], ...] = field(default=(), compare=False)

    def __call__(self, hu: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return denoise(hu, self.method, self.strength)


def tune_denoiser(noisy_slices: Sequence[np.ndarray], reference: float | Sequence[np.ndarray],
                  method: str = "gaussian", strengths: Sequence[float] | None = None) -> Denoiser:
    """Pick the strength whose denoised target slices have the source's soft-tissue noise.

    Criterion: the median over ``noisy_slices`` of :func:`soft_tissue_noise_std` after denoising is
    closest to the reference noise std: ``reference`` is that std in HU, or clean (source-domain)
    slices to measure it on. Candidates: ``strengths``, else sigma 0-3 pixels (gaussian) or h = 0.2-1.5
    x the target's measured noise std (nlm). Ties go to the weaker strength.
    """
    if not noisy_slices:
        raise ValueError("tune_denoiser needs at least one noisy target slice")
    if isinstance(reference, int | float):
        ref = float(reference)
    else:
        ref = float(np.nanmedian([soft_tissue_noise_std(s) for s in reference]))
    noisy_std = float(np.nanmedian([soft_tissue_noise_std(s) for s in noisy_slices]))
    if not np.isfinite(ref) or not np.isfinite(noisy_std):
        raise ValueError("no homogeneous soft tissue (-100..200 HU) found to measure noise on")
    if strengths is None:
        if method == "gaussian":
            strengths = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
        else:
            strengths = tuple(round(f * noisy_std, 2) for f in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5))
    table = []
    for s in sorted(strengths):
        std = float(np.nanmedian([soft_tissue_noise_std(denoise(x, method, s)) for x in noisy_slices]))
        table.append((float(s), std))
    best = min(table, key=lambda r: (abs(r[1] - ref), r[0]))
    log.info("denoiser %s: strength %.3g gives soft-tissue noise %.1f HU (reference %.1f, untreated %.1f)",
             method, best[0], best[1], ref, noisy_std)
    return Denoiser(method, best[0], ref, tuple(table))
