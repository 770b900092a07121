"""A physics-based CT scanner simulator: re-image a HU slice as another protocol would acquire it.

The acquisition chain (Kak & Slaney, *Principles of Computerized Tomographic Imaging*, ch. 3-4;
Hsieh, *Computed Tomography*, ch. 3 and 10):

1. HU -> linear attenuation ``mu = mu_water * (1 + HU / 1000)`` (``mu_water`` at ~70 keV effective).
2. Parallel-beam forward projection ``p(theta, s)`` (line integrals of ``mu``), with an optional Gaussian
   focal-spot/detector blur of the *signal* (``blur_mm``).
3. Quantum noise: detected counts ``N ~ Poisson(I0 * exp(-p))`` with ``I0 = I0_REF * dose_fraction *
   slice_mm / REF_SLICE_MM`` photons per ray, plus electronic noise ``N(0, sigma_e^2)`` counts; counts are
   clamped at ``COUNT_FLOOR`` (photon starvation) and ``p_noisy = -log(N / I0)``.
4. Filtered back-projection with a reconstruction kernel: ramp ``|nu|`` (the Kak-Slaney discrete ramp,
   which has the right DC term) times an apodisation window ``A(nu)`` from :data:`KERNELS`.
5. Back to HU.

Projector. Both projection and back-projection are computed through the Fourier-slice theorem with
non-uniform FFTs (FINUFFT, Barnett et al. 2019): projection = 2D type-2 NUFFT of the image onto polar
frequency samples, then a 1D inverse FFT along the detector; back-projection of filtered projections =
2D type-1 NUFFT from the same polar samples. This is the exact Radon transform / back-projection of the
band-limited (sinc-interpolated) image, costs O(N^2 log N) instead of O(N^3), and is checked against
``skimage.transform.radon/iradon`` in tests/sim/test_scanner.py. Every slice goes through the full chain
(no noise-insertion shortcut is needed for the speed goal).

Real (already noisy) input. A real scan already carries the noise of its own acquisition. With
``noise_free_input=False`` the input is taken as a reference-dose scan with the "standard" kernel, and
only the *additional* noise is inserted (Yu et al., Med. Phys. 39:2021, 2012): the extra noise is
simulated at ``I0_add = I0 * f / (1 - f)`` (so variances add to that of dose ``f``), and the resolution
of the image is changed by ``A_target / A_standard`` (clipped), which changes the input's own noise
the same way a re-reconstruction would.

Not modelled (documented simplifications): polychromatic beam hardening and scatter, bowtie filter,
fan/cone geometry (parallel rebinned geometry is what most scanners reconstruct from anyway),
tube-current modulation, and geometric slice profiles (``slice_mm`` scales the photon count only).
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from dataclasses import asdict, dataclass, replace

import numpy as np

from styleseg.errors import ConfigError
from styleseg.sim.projector import (
    Geometry,
    _geometry,
    backproject_fourier,
    fourier_to_sinogram,
    project_fourier,
    sinogram_to_fourier,
)

log = logging.getLogger("styleseg.sim.scanner")

MU_WATER_PER_MM = 0.0193  #: water at ~70 keV effective energy (NIST XCOM), 1/mm
I0_REF = 1.2e5  #: incident photons per ray at the reference dose (standard protocol, 5 mm slice)
REF_SLICE_MM = 5.0
COUNT_FLOOR = 0.5  #: detected counts are clamped here before the log (scanners do the same)
#: AEC reference: 90th percentile of a slice's line integrals for an average adult chest (phantom, 0.9 mm)
AEC_REF_P90 = 3.9
AEC_RANGE = (0.05, 4.0)


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel: ramp filter times an apodisation window ``A(nu)``, nu in cycles/mm.

    ``A(nu) = (1 + boost * (nu / nu50)^2) * exp(-ln2 * (nu / nu50)^order)``: a smooth roll-off that
    halves at ``nu50`` (for boost 0), with mid-frequency edge enhancement for sharp (lung/bone) kernels.
    """

    name: str
    nu50: float
    order: float
    boost: float = 0.0
    description: str = ""

    def window(self, nu: np.ndarray) -> np.ndarray:
        r = np.abs(nu) / self.nu50
        return (1.0 + self.boost * r**2) * np.exp(-math.log(2.0) * r**self.order)


#: The kernel table (cycles/mm). Roughly: smooth ~ Siemens B10-B20 / Toshiba FC17; standard ~ B30/B31,
#: GE STANDARD; sharp ~ B50-B60; lung ~ B70 / Philips L (edge-enhancing).
KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("smooth", 0.28, 2.0, 0.0, "soft-tissue smoothing kernel (B10-B20, FC17)"),
    Kernel("standard", 0.42, 3.0, 0.0, "standard body kernel (B30, GE STANDARD)"),
    Kernel("sharp", 0.70, 4.0, 0.8, "sharp kernel with edge enhancement (B50-B60)"),
    Kernel("lung", 0.90, 8.0, 3.0, "very sharp lung kernel (B70, Philips L)"),
)}


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.4)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_kernel(name: str) -> Kernel:
    if name not in KERNELS:
        raise ConfigError(f"unknown reconstruction kernel {name!r}{_did_you_mean(name, list(KERNELS))}; "
                          f"choose one of {', '.join(KERNELS)}")
    return KERNELS[name]


def check_dose_fraction(f: float) -> float:
    if not (isinstance(f, int | float) and math.isfinite(f) and 0.0 < f <= 1.0):
        raise ConfigError(f"dose fraction must be in (0, 1] (a fraction of the reference dose), got {f!r}")
    return float(f)


@dataclass(frozen=True)
class Protocol:
    """An acquisition + reconstruction protocol (one row of :data:`PROTOCOLS`)."""

    name: str
    dose_fraction: float
    kernel: str
    electronic_noise: float = 5.0  #: std of electronic noise, in detected-photon units
    blur_mm: float = 0.35  #: Gaussian focal-spot/detector blur of the signal (sigma, mm)
    slice_mm: float = REF_SLICE_MM
    views: int = 720
    aec: bool = True  #: automatic exposure control: scale I0 with the patient's attenuation (see reimage)

    def __post_init__(self) -> None:
        check_dose_fraction(self.dose_fraction)
        get_kernel(self.kernel)
        if self.views < 16 or self.electronic_noise < 0 or self.blur_mm < 0 or self.slice_mm <= 0:
            raise ConfigError(f"protocol {self.name!r}: views >= 16, electronic_noise >= 0, blur_mm >= 0 and "
                              f"slice_mm > 0 are required (got {self})")

    @property
    def i0(self) -> float:
        """Incident photons per ray."""
        return I0_REF * self.dose_fraction * self.slice_mm / REF_SLICE_MM

    def to_json(self) -> dict:
        return asdict(self)


#: The protocol table: the reference protocol and the lower-dose protocols of the built-in benchmark.
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("standard", 1.0, "standard"),
    Protocol("half-dose-sharp", 0.5, "sharp"),
    Protocol("low-dose-smooth", 0.25, "smooth"),
    Protocol("low-dose-standard", 0.25, "standard"),
    Protocol("low-dose-sharp", 0.25, "sharp"),
    Protocol("ultra-low-dose-standard", 0.1, "standard", electronic_noise=8.0),
    Protocol("ultra-low-dose-lung", 0.1, "lung", electronic_noise=8.0),
)}
#: The target-domain protocols of `make-benchmark` (everything but the reference).
TARGET_PROTOCOLS: tuple[str, ...] = tuple(n for n in PROTOCOLS if n != "standard")


_ADHOC = re.compile(r"dose([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)-([a-z]+)")


def get_protocol(protocol: Protocol | str | None = None, dose_fraction: float | None = None,
                 kernel: str | None = None) -> Protocol:
    """A protocol by name, or an ad-hoc one from ``dose_fraction`` + ``kernel`` (others as "standard").

    Given a protocol and a dose fraction or kernel, those override the protocol's values. The name of an
    ad-hoc protocol (``"dose0.1-sharp"``) gives that protocol back, so it can be named in an experiment file.
    """
    if isinstance(protocol, Protocol):
        base = protocol
    elif protocol is not None and protocol not in PROTOCOLS and (m := _ADHOC.fullmatch(protocol)):
        # an ad-hoc protocol's own name ("dose0.1-sharp", as get_protocol names them): the same protocol again
        base = replace(PROTOCOLS["standard"], name=protocol, dose_fraction=check_dose_fraction(float(m[1])),
                       kernel=get_kernel(m[2]).name)
    elif protocol is not None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {protocol!r}{_did_you_mean(protocol, list(PROTOCOLS))}; "
                              f"choose one of {', '.join(PROTOCOLS)}")
        base = PROTOCOLS[protocol]
    else:
        if dose_fraction is None and kernel is None:
            raise ConfigError("give a protocol name, or a dose fraction and/or a kernel")
        base = PROTOCOLS["standard"]
    if dose_fraction is None and kernel is None:
        return base
    d = base.dose_fraction if dose_fraction is None else check_dose_fraction(dose_fraction)
    k = base.kernel if kernel is None else get_kernel(kernel).name
    name = base.name if protocol is not None else f"dose{d:g}-{k}"
    if protocol is not None and (d != base.dose_fraction or k != base.kernel):
        name = f"{base.name}+dose{d:g}-{k}"
    return replace(base, name=name, dose_fraction=d, kernel=k)


def fbp(sinogram: np.ndarray, shape: tuple[int, int], kernel: str | None = None,
        spacing_mm: float = 1.0) -> np.ndarray:
    """Filtered back-projection of a (views, n_det) sinogram onto an image of ``shape`` (ramp filter,
    times the kernel window if given)."""
    geom = _geometry(shape[0], shape[1], sinogram.shape[0])
    filt = geom.ramp.copy()
    if kernel is not None:
        filt = filt * get_kernel(kernel).window(geom.omega / (2 * np.pi * spacing_mm))
    q = sinogram_to_fourier(np.asarray(sinogram, float)[None], geom) * filt
    return backproject_fourier(q, geom)[0]


def kernel_noise_factor(kernel: str, spacing_mm: float = 0.9, reference: str = "standard") -> float:
    """Noise std of ``kernel`` relative to ``reference`` at equal dose: sqrt(int nu^2 A^2 / int nu^2 A_ref^2)
    over the 2D Nyquist disc (FBP NPS ~ |nu| A^2, so the variance ~ int nu^2 A^2 d nu)."""
    nu = np.linspace(0, 0.5 / spacing_mm, 2001)
    a, r = get_kernel(kernel).window(nu), get_kernel(reference).window(nu)
    return float(np.sqrt(np.trapezoid(nu**2 * a**2, nu) / np.trapezoid(nu**2 * r**2, nu)))


# --- the acquisition chain --------------------------------------------------------------------------
def reimage(hu: np.ndarray, spacing_mm: float, protocol: Protocol | str, rng: np.random.Generator | int | None = None,
            noise_free_input: bool = True, batch: int = 8, input_noise_hu: float | None = None) -> np.ndarray:
    """Re-image HU slices (H, W) or (N, H, W) with ``protocol``; returns float32 HU of the same shape.

    ``noise_free_input=True`` (phantoms): the full noise of the protocol is simulated.
    ``noise_free_input=False`` (a real reference-dose scan): only the additional noise and the kernel
    change relative to "standard" are applied (see the module docstring). The reference dose is
    calibrated to the input: ``input_noise_hu`` (soft-tissue noise std of the input; None: measured on
    the middle slice with :func:`styleseg.texture.slice_nps`) is matched by the simulated noise of the
    standard protocol at the reference dose on that slice, so dose fraction f adds variance
    ``sigma_in^2 (1/f - 1)`` (for the standard kernel).
    """
    prot = get_protocol(protocol)
    if not (spacing_mm > 0 and math.isfinite(spacing_mm)):
        raise ConfigError(f"pixel spacing must be a positive number of mm, got {spacing_mm!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    arr = np.asarray(hu, dtype=np.float64)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    if arr.ndim != 3:
        raise ConfigError(f"reimage needs an (H, W) or (N, H, W) array, got shape {arr.shape}")
    geom = _geometry(arr.shape[1], arr.shape[2], prot.views)
    nu = geom.omega / (2 * np.pi * spacing_mm)  # cycles/mm
    win_t = get_kernel(prot.kernel).window(nu)
    blur = np.exp(-2 * (np.pi * prot.blur_mm * nu) ** 2)
    out = np.empty(arr.shape, np.float32)
    i0_scale = 1.0
    if not noise_free_input and prot.dose_fraction < 1.0:
        scale = _calibrate_real(arr[arr.shape[0] // 2], spacing_mm, geom, prot, input_noise_hu)
        if scale is None:  # no noise to calibrate against: a synthetic image, simulated in full
            noise_free_input = True
        else:
            i0_scale = scale
    for start in range(0, arr.shape[0], batch):
        chunk = arr[start:start + batch]
        mu = MU_WATER_PER_MM * spacing_mm * (1.0 + np.maximum(chunk, -1000.0) / 1000.0)  # per pixel
        pf = project_fourier(mu, geom)
        if noise_free_input:
            pf_sig = pf * blur
            p = fourier_to_sinogram(pf_sig, geom)
            i0 = prot.i0 * _aec_factor(p) if prot.aec else np.full(p.shape[0], prot.i0)
            dp = np.stack([_noise(p[j], i0[j], prot.electronic_noise, rng) for j in range(p.shape[0])])
            q = (pf_sig + sinogram_to_fourier(dp, geom)) * (geom.ramp * win_t)
        else:
            win_s = get_kernel("standard").window(nu)
            ratio = np.clip(win_t / np.maximum(win_s, 1e-6), 0.0, 4.0)
            if prot.dose_fraction < 1.0:
                i0_add = i0_scale * prot.i0 / (1.0 - prot.dose_fraction)  # = I0 f / (1 - f), I0: reference
                dp = _noise(fourier_to_sinogram(pf, geom), i0_add, prot.electronic_noise, rng)
                q = pf * (geom.ramp * ratio) + sinogram_to_fourier(dp, geom) * (geom.ramp * win_t)
            else:
                q = pf * (geom.ramp * ratio)
        mu_rec = backproject_fourier(q, geom)
        out[start:start + batch] = (1000.0 * (mu_rec / (MU_WATER_PER_MM * spacing_mm) - 1.0)).astype(np.float32)
    return out[0] if squeeze else out


#: an input whose soft-tissue noise is below this (HU) carries no acquisition noise: it is simulated in full
NOISE_FREE_HU = 0.5


def _calibrate_real(hu: np.ndarray, spacing_mm: float, geom: Geometry, prot: Protocol,
                    input_noise_hu: float | None) -> float | None:
    """I0 scale that makes the simulated reference-dose standard-kernel noise match the input's noise, or
    None when the input has no measurable noise (a synthetic image, e.g. a water cylinder written as NIfTI):
    there is no reference dose to add noise to, so the caller simulates the protocol's full noise."""
    from styleseg.texture import slice_nps

    if input_noise_hu is None:
        try:
            input_noise_hu = slice_nps(hu, spacing_mm).std
        except ValueError:
            log.warning("no soft-tissue ROI to measure the input noise; assuming the reference dose")
            return 1.0
    if not input_noise_hu > NOISE_FREE_HU:
        log.info("input noise %.2g HU: a noise-free image, simulated as one (the protocol's full noise)",
                 input_noise_hu)
        return None
    mu = MU_WATER_PER_MM * spacing_mm * (1.0 + np.maximum(hu, -1000.0) / 1000.0)
    pf = project_fourier(mu[None], geom)
    dp = _noise(fourier_to_sinogram(pf, geom)[0], I0_REF * prot.slice_mm / REF_SLICE_MM, 0.0,
                np.random.default_rng(0))
    nu = geom.omega / (2 * np.pi * spacing_mm)
    noise = backproject_fourier(sinogram_to_fourier(dp[None], geom) * (geom.ramp * get_kernel("standard").window(nu)),
                                geom)[0] / (MU_WATER_PER_MM * spacing_mm) * 1000.0
    # the same estimator on the noise-only image, laid into the input's soft tissue
    probe = noise + np.where((hu > -200) & (hu < 250), 0.0, -1000.0)
    try:
        sim = slice_nps(probe, spacing_mm).std
    except ValueError:
        sim = float(noise.std())
    scale = (float(sim) / float(input_noise_hu)) ** 2
    log.info("real input: measured noise %.1f HU, simulated reference noise %.1f HU -> I0 x %.3g",
             input_noise_hu, sim, scale)
    return float(np.clip(scale, 0.01, 100.0))


def _aec_factor(p: np.ndarray) -> np.ndarray:
    """Automatic exposure control: per slice, scale I0 by exp(p90 - AEC_REF_P90) (clipped to AEC_RANGE),
    so a smaller patient gets fewer photons and about the noise of an average adult (as AEC aims for)."""
    p90 = np.percentile(p.reshape(p.shape[0], -1), 90, axis=1)
    return np.clip(np.exp(p90 - AEC_REF_P90), *AEC_RANGE)


def _noise(p: np.ndarray, i0: float, sigma_e: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy minus clean line integrals: Poisson(I0 e^-p) + N(0, sigma_e^2) counts, floored, logged."""
    p = np.maximum(p, 0.0)
    expected = i0 * np.exp(-p)
    counts = rng.poisson(expected).astype(np.float64)
    if sigma_e > 0:
        counts += rng.normal(0.0, sigma_e, size=counts.shape)
    counts = np.maximum(counts, COUNT_FLOOR)
    return -np.log(counts / i0) - p
