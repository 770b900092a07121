"""Comparison-arm transforms (issue 6 arms 2, 3, 4, 8) with hand-checkable properties."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from scipy import ndimage as ndi

from styleseg.data.domain import (
    FDA,
    Denoiser,
    HistogramMatch,
    IntensityAugment,
    denoise,
    fda_transfer,
    soft_tissue_noise_std,
    tune_denoiser,
)


def _phantom(rng: np.random.Generator, n: int = 128, noise: float = 30.0) -> np.ndarray:
    """Air around a soft-tissue disc (40 HU) with a lung-like hole, plus white noise."""
    y, x = np.mgrid[:n, :n]
    hu = np.full((n, n), -1000.0)
    disc = (y - n / 2) ** 2 + (x - n / 2) ** 2 < (0.45 * n) ** 2
    hu[disc] = 40.0
    hu[(y - n / 2) ** 2 + (x - n / 3) ** 2 < (0.1 * n) ** 2] = -850.0
    return (hu + rng.normal(0, noise, hu.shape)).astype(np.float32)


# --- arm 2 ----------------------------------------------------------------------------------------------


def test_intensity_augment_uses_nnunet_probabilities():
    aug = IntensityAugment()
    rng = np.random.default_rng(0)
    n = 4000
    counts: dict[str, int] = {}
    for _ in range(n):
        for name, _p in aug.plan(rng):
            counts[name] = counts.get(name, 0) + 1
    expected = {"noise": 0.1, "blur": 0.2 * 0.5, "brightness": 0.15, "contrast": 0.15, "lowres": 0.25 * 0.5,
                "gamma_inverted": 0.1, "gamma": 0.3}
    for k, p in expected.items():
        assert counts[k] / n == pytest.approx(p, abs=0.02), k


def test_noise_adds_the_right_std_and_ops_keep_their_invariants():
    rng = np.random.default_rng(1)
    flat = np.full((256, 256), 40.0, np.float32)
    aug = IntensityAugment(std_hu=400.0, p_noise=1.0, noise_std=(0.05, 0.05), p_blur=0, p_brightness=0,
                           p_contrast=0, p_lowres=0, p_gamma_inverted=0, p_gamma=0)
    out = aug(flat, rng)
    assert (out - flat).std() == pytest.approx(0.05 * 400.0, rel=0.02)  # 20 HU
    assert flat.max() == 40.0  # input untouched
    x = _phantom(rng, 64)
    base = IntensityAugment(mean_hu=-300.0)
    c = base.apply(x, [("contrast", {"factor": 1.25})], rng)
    assert c.min() >= x.min() - 1e-3 and c.max() <= x.max() + 1e-3
    g = base.apply(x, [("gamma", {"gamma": 1.4})], rng)
    assert g.mean() == pytest.approx(x.mean(), abs=0.05) and g.std() == pytest.approx(x.std(), rel=1e-3)
    assert not np.allclose(g, x)
    b = base.apply(np.array([[-300.0, -100.0]], np.float32), [("brightness", {"factor": 0.5})], rng)
    assert b.tolist() == [[-300.0, -200.0]]  # the z-score mean is the fixed point
    blur = base.apply(x, [("blur", {"sigma_y": 1.0, "sigma_x": 1.0})], rng)
    assert np.allclose(blur, ndi.gaussian_filter(x, 1.0))
    lr = base.apply(x, [("lowres", {"scale": 0.5})], rng)
    assert lr.shape == x.shape and not np.allclose(lr, x)
    a1 = pickle.loads(pickle.dumps(base))(x, np.random.default_rng(7))
    a2 = base(x, np.random.default_rng(7))
    assert np.array_equal(a1, a2) and a1.dtype == np.float32


def test_intensity_augment_fit_measures_foreground():
    s = np.array([[-1000.0, 0.0], [100.0, 200.0]] * 10)
    aug = IntensityAugment.fit([s])
    assert aug.mean_hu == pytest.approx(100.0, abs=2) and aug.std_hu == pytest.approx(math.sqrt(2 / 3) * 100, rel=0.05)


# --- arm 3 ----------------------------------------------------------------------------------------------


def test_histogram_match_maps_ranks_onto_target_values():
    rng = np.random.default_rng(2)
    src = rng.permutation(64).reshape(8, 8).astype(np.float32)  # all "body" (> -950 HU)
    tgt = (10 * np.arange(64) + 5).reshape(8, 8).astype(np.float32)
    out = HistogramMatch([tgt]).match(src, 0)
    assert np.array_equal(out, 10 * src + 5)


def test_histogram_match_maps_cdfs_inside_the_body_and_leaves_air():
    rng = np.random.default_rng(3)
    src = np.full((64, 64), -1000.0, np.float32)
    src[8:56, 8:56] = rng.normal(0, 10, (48, 48))
    tgt = np.full((64, 64), -1000.0, np.float32)
    tgt[4:60, 4:60] = rng.gamma(2.0, 30.0, (56, 56))
    hm = HistogramMatch([tgt])
    out = hm(src, rng)
    inside = out[12:52, 12:52].ravel()
    q = np.linspace(0.05, 0.95, 10)
    assert np.quantile(inside, q) == pytest.approx(np.quantile(tgt[8:56, 8:56], q), rel=0.1, abs=3)
    assert np.array_equal(out[:4], src[:4])  # air outside the body unchanged
    order = np.argsort(src[8:56, 8:56].ravel())
    assert np.all(np.diff(out[8:56, 8:56].ravel()[order]) >= 0)  # a monotone mapping of the values


# --- arm 4 ----------------------------------------------------------------------------------------------


def test_fda_beta_zero_is_identity_and_full_swap_gives_target_amplitude():
    rng = np.random.default_rng(4)
    src, tgt = _phantom(rng, 32), rng.normal(-200, 80, (32, 32)).astype(np.float32)
    assert np.array_equal(fda_transfer(src, tgt, 0.0), src)
    full = fda_transfer(src, tgt, 0.5)
    fo, fs, ft = np.fft.fft2(full.astype(np.float64)), np.fft.fft2(src.astype(np.float64)), np.fft.fft2(tgt)
    assert np.allclose(np.abs(fo), np.abs(ft), rtol=1e-4, atol=1e-2 * np.abs(ft).mean())
    phase_diff = np.angle(fo * np.conj(fs))
    assert np.allclose(phase_diff[np.abs(ft) > 1e-3 * np.abs(ft).max()], 0, atol=1e-3)


def test_fda_changes_only_the_low_frequency_window():
    rng = np.random.default_rng(5)
    src, tgt = _phantom(rng, 64), _phantom(rng, 64, noise=90) - 50
    beta = 0.05  # half-width b = floor(0.05 * 64) = 3: a 7 x 7 window around DC
    out = fda_transfer(src, tgt, beta)
    d = np.fft.fftshift(np.abs(np.fft.fft2(out.astype(np.float64) - src)))
    c, b = 32, 3
    outside = d.copy()
    outside[c - b: c + b + 1, c - b: c + b + 1] = 0
    assert outside.max() < 1e-3 * d.max()
    assert out.mean() == pytest.approx(tgt.mean(), rel=1e-4)  # DC amplitude swapped, both means negative
    # the class: random target crop of the source's size, clipped to the CT range, picklable
    fda = pickle.loads(pickle.dumps(FDA([tgt, _phantom(rng, 80)], beta=(0.01, 0.02))))
    o = fda(src[:40, :48], rng)
    assert o.shape == (40, 48) and o.dtype == np.float32 and o.min() >= -1024


# --- arm 8 ----------------------------------------------------------------------------------------------


def test_gaussian_denoise_reduces_white_noise_std_by_the_known_factor():
    rng = np.random.default_rng(6)
    noise = rng.normal(0, 10.0, (256, 256)).astype(np.float32)
    s = 2.0
    out = denoise(noise, "gaussian", s)
    # exact: std factor of a separable filter on white noise = sum of the squared 1D kernel taps;
    # continuum limit 1 / (2 sigma sqrt(pi)) = 0.141 for sigma = 2
    k = ndi.gaussian_filter1d(np.eye(1, 41, 20).ravel(), s)
    assert (k**2).sum() == pytest.approx(1 / (2 * s * math.sqrt(math.pi)), rel=0.01)
    assert out.std() == pytest.approx(10.0 * (k**2).sum(), rel=0.06)
    assert np.array_equal(denoise(noise, "gaussian", 0), noise)
    nlm = denoise(noise + 40, "nlm", 10.0)
    assert nlm.std() < 0.7 * noise.std()
    with pytest.raises(ValueError, match="unknown denoising method"):
        denoise(noise, "median", 1)


def test_soft_tissue_noise_std_measures_white_noise():
    rng = np.random.default_rng(7)
    x = _phantom(rng, 128, noise=30.0)
    assert soft_tissue_noise_std(x) == pytest.approx(30.0, rel=0.06)
    assert math.isnan(soft_tissue_noise_std(np.full((64, 64), -1000.0)))


def test_tune_denoiser_matches_the_reference_noise():
    rng = np.random.default_rng(8)
    noisy = [_phantom(rng, 128, noise=60.0) for _ in range(2)]
    clean = [_phantom(rng, 128, noise=15.0) for _ in range(2)]
    d = tune_denoiser(noisy, 15.0, "gaussian")
    stds = dict(d.table)
    assert d.strength == min(stds, key=lambda s: abs(stds[s] - 15.0))
    assert abs(stds[d.strength] - 15.0) < 4.0 and 0.75 <= d.strength <= 1.5
    assert stds[0.0] == pytest.approx(60.0, rel=0.08)  # untreated
    d2 = tune_denoiser(noisy, clean, "gaussian")  # reference measured on clean slices
    assert d2.strength == d.strength
    assert tune_denoiser(noisy, 60.0).strength == 0.0  # already at the reference noise: no smoothing
    dn = pickle.loads(pickle.dumps(Denoiser("gaussian", 1.0)))
    assert np.allclose(dn(noisy[0]), ndi.gaussian_filter(noisy[0], 1.0))
