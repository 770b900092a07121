"""Physics and projector tests of styleseg.sim.scanner (issue 3, "must show" 1 and 5)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from styleseg import texture as nps
from styleseg.errors import ConfigError
from styleseg.sim import projector, scanner
from styleseg.sim.scanner import Protocol, get_protocol, reimage


def _disk(n: int = 128, r: float = 50, hu: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    img = np.full((n, n), -1000.0)
    img[np.hypot(xx - n // 2, yy - n // 2) < r] = hu
    return img


def test_radon_matches_skimage():
    from skimage.transform import radon as sk_radon

    n = 128
    yy, xx = np.mgrid[:n, :n]
    img = np.zeros((n, n))
    img[np.hypot(xx - 64, yy - 64) < 40] = 1.0
    img[(xx - 80) ** 2 + (yy - 50) ** 2 < 100] = 2.0
    img = ndi.gaussian_filter(img, 1.5)
    ours = projector.radon(img, 180)
    # skimage rotates the other way: our angle a is its -a; its detector is n wide, centred at n // 2
    ref = sk_radon(img, theta=-np.arange(180.0), circle=True).T
    c, rc = ours.shape[1] // 2, ref.shape[1] // 2
    ours = ours[:, c - rc:c - rc + ref.shape[1]]
    assert np.abs(ours - ref).max() < 0.005 * ref.max()


def test_fbp_matches_skimage_iradon_and_inverts_radon():
    from skimage.transform import iradon

    img = ndi.gaussian_filter(_disk(96, 30, 1.0) + 1000.0, 1.0) / 1000.0  # values 0..1
    sino = projector.radon(img, 180)
    rec = scanner.fbp(sino, img.shape)
    inner = (slice(16, 80), slice(16, 80))
    assert np.abs(rec - img)[inner].max() < 2e-3
    c, rc = sino.shape[1] // 2, 48
    sk = iradon(sino[:, c - rc:c - rc + 96].T, theta=-np.arange(180.0), circle=True, filter_name="ramp")
    assert np.abs(rec - sk)[inner].max() < 0.03


def _proto(dose: float, kernel: str = "standard") -> Protocol:
    return Protocol("test", dose, kernel, electronic_noise=0.0, aec=False, blur_mm=0.0)


def _noise_std(img: np.ndarray, prot: Protocol, seeds=(1, 2)) -> float:
    a, b = (reimage(img, 1.0, prot, s) for s in seeds)
    return float(((a - b)[44:84, 44:84] / np.sqrt(2)).std())


def test_noise_scales_as_inverse_sqrt_dose():
    img = _disk()
    doses = [1.0, 0.5, 0.25, 0.1]
    stds = np.array([_noise_std(img, _proto(d)) for d in doses])
    normalised = stds * np.sqrt(doses)  # constant if std ~ 1 / sqrt(dose)
    assert np.all(np.abs(normalised / normalised.mean() - 1) < 0.10), (stds, normalised)


def test_sharper_kernel_moves_nps_peak_up_and_matches_kernel_factor():
    img = _disk(128, 55)
    peaks, stds = [], []
    for k in ("smooth", "standard", "sharp", "lung"):
        a, b = (reimage(img, 0.9, _proto(0.5, k), s) for s in (3, 4))
        r = nps.nps_from_difference(a[32:96, 32:96], b[32:96, 32:96], 0.9, roi=32)
        peaks.append(r.peak_freq)
        stds.append(r.std)
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1], peaks
    # noise std ratio sharp / standard = analytic kernel factor sqrt(int nu^2 A^2 / int nu^2 A_std^2)
    assert stds[2] / stds[1] == pytest.approx(scanner.kernel_noise_factor("sharp", 0.9), rel=0.15)


def test_fbp_noise_nps_has_ramp_times_window_shape():
    img = _disk(128, 55)
    a, b = (reimage(img, 1.0, _proto(0.5, "standard"), s) for s in (5, 6))
    r = nps.nps_from_difference(a[32:96, 32:96], b[32:96, 32:96], 1.0, roi=32)
    sel = (r.freq > 0.08) & (r.freq < 0.45)
    model = r.freq * scanner.get_kernel("standard").window(r.freq) ** 2  # NPS ~ |f| A(f)^2
    ratio = r.nps[sel] / model[sel]
    assert ratio.std() / ratio.mean() < 0.25


@pytest.mark.parametrize("dose", [1.0, 0.25])
def test_mean_hu_is_unbiased(dose):
    img = _disk(128, 55, 0.0)
    yy, xx = np.mgrid[:128, :128]
    img[np.hypot(xx - 50, yy - 64) < 12] = 200.0
    img[np.hypot(xx - 80, yy - 64) < 12] = -100.0
    out = reimage(np.repeat(img[None], 4, 0), 0.9, get_protocol("standard", dose_fraction=dose), 7)
    for (cy, cx), hu in (((64, 50), 200.0), ((64, 80), -100.0), ((40, 64), 0.0)):
        patch = out[:, cy - 6:cy + 6, cx - 6:cx + 6]
        assert patch.mean() == pytest.approx(hu, abs=5.0)


def test_white_noise_through_known_filter_matches_analytic_nps():
    rng = np.random.default_rng(0)
    n, dx, sigma, s_mm = 512, 0.8, 20.0, 1.2
    w = rng.normal(0, sigma, (n, n))
    f = np.fft.fftfreq(n, dx)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    h = np.exp(-2 * (np.pi * s_mm) ** 2 * (fx**2 + fy**2))  # Gaussian blur transfer function
    filtered = np.real(np.fft.ifft2(np.fft.fft2(w) * h))
    r = nps.noise_nps(filtered, dx, roi=64, detrend="mean")
    analytic = sigma**2 * dx**2 * np.exp(-4 * (np.pi * s_mm * r.freq) ** 2)
    sel = (r.freq > 0.05) & (analytic > 0.05 * analytic.max())
    assert np.allclose(r.nps[sel], analytic[sel], rtol=0.12)


def test_reimage_shapes_and_dtype():
    img = _disk(64, 20)
    assert reimage(img, 0.9, "standard", 0).shape == (64, 64)
    out = reimage(np.stack([img, img]), 0.9, "low-dose-sharp", 0)
    assert out.shape == (2, 64, 64) and out.dtype == np.float32


def test_bad_protocol_kernel_and_dose_errors():
    with pytest.raises(ConfigError, match="did you mean 'low-dose-sharp'"):
        get_protocol("low-dose-sharpp")
    with pytest.raises(ConfigError, match="did you mean 'sharp'"):
        get_protocol(dose_fraction=0.5, kernel="shrap")
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"dose fraction must be in \(0, 1\]"):
            get_protocol(dose_fraction=bad, kernel="standard")
    with pytest.raises(ConfigError):
        reimage(np.zeros((4, 4, 4, 4)), 0.9, "standard")


def test_an_adhoc_protocol_is_named_and_found_again_by_its_name():
    from styleseg.errors import ConfigError

    p = scanner.get_protocol(dose_fraction=0.05, kernel="sharp")
    assert p.name == "dose0.05-sharp" and scanner.get_protocol(p.name) == p
    assert scanner.get_protocol("dose1-standard").dose_fraction == 1.0
    with pytest.raises(ConfigError, match="dose fraction"):
        scanner.get_protocol("dose2-sharp")
    with pytest.raises(ConfigError, match="did you mean 'sharp'"):
        scanner.get_protocol("dose0.1-shrp")
