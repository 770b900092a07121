"""The parallel-beam projector of the CT simulator, through the Fourier-slice theorem with non-uniform FFTs.

Projection = 2D type-2 NUFFT of the image onto polar frequency samples, then a 1D inverse FFT along the
detector; back-projection of filtered projections = 2D type-1 NUFFT from the same polar samples (FINUFFT,
Barnett et al. 2019). This is the exact Radon transform / back-projection of the band-limited
(sinc-interpolated) image at O(N^2 log N) instead of O(N^3); tests/sim/test_scanner.py checks it against
``skimage.transform.radon/iradon``.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

NUFFT_EPS = 1e-5


@dataclass(frozen=True)
class Geometry:
    """Parallel-beam geometry for an (H, W) image: ``views`` angles in [0, pi), ``n_det`` detector bins of
    one pixel (centre bin ``n_det // 2``; image centre pixel ``(h // 2, w // 2)``), detector FFT length
    ``n_pad`` (>= 2 n_det, so the ramp filter does not wrap around). Projections are real, so only the
    ``n_pad // 2 + 1`` non-negative detector frequencies are kept (Hermitian symmetry)."""

    h: int
    w: int
    views: int

    @property
    def n_det(self) -> int:
        return int(math.ceil(math.hypot(self.h, self.w))) + 2

    @functools.cached_property
    def n_pad(self) -> int:
        import scipy.fft

        n = int(scipy.fft.next_fast_len(2 * self.n_det, real=True))
        return n + (n % 2)

    @property
    def angles(self) -> np.ndarray:
        return np.arange(self.views) * (np.pi / self.views)

    @functools.cached_property
    def omega(self) -> np.ndarray:
        """Non-negative detector angular frequencies (rad/pixel), rfft order, length n_pad // 2 + 1."""
        return 2 * np.pi * np.fft.rfftfreq(self.n_pad)

    @functools.cached_property
    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Polar frequency samples (row component, column component), flattened (views * n_freq)."""
        th = self.angles[:, None]
        om = self.omega[None, :]
        return (np.ascontiguousarray((om * np.sin(th)).ravel(), dtype=np.float32),
                np.ascontiguousarray((om * np.cos(th)).ravel(), dtype=np.float32))

    @functools.cached_property
    def det_shift(self) -> np.ndarray:
        """Phase that puts detector bin 0 at ``s = -(n_det // 2)``."""
        return np.exp(-1j * self.omega * (self.n_det // 2)).astype(np.complex64)

    @functools.cached_property
    def half_weights(self) -> np.ndarray:
        """Weights that turn a sum over non-negative frequencies into the full (Hermitian) sum."""
        w = np.full(self.omega.shape, 2.0)
        w[0] = 1.0
        w[-1] = 1.0  # Nyquist (n_pad is even)
        return w

    @functools.cached_property
    def ramp(self) -> np.ndarray:
        """Kak-Slaney discrete ramp (Kak & Slaney eq. 3.61; its DC term avoids the cupping of a sampled
        |nu|), rfft order, cycles/pixel units."""
        k = np.arange(self.n_pad)
        d = np.minimum(k, self.n_pad - k)
        f = np.where(d % 2 == 1, -1.0 / (np.pi * np.maximum(d, 1)) ** 2, 0.0)
        f[0] = 0.25
        return np.real(np.fft.rfft(f))


@functools.lru_cache(maxsize=8)
def _geometry(h: int, w: int, views: int) -> Geometry:
    return Geometry(h, w, views)


#: FINUFFT prints "using opts.nthreads=N, more than the M physically cores available" on stderr for every
#: plan (every slice) when N exceeds its count of physical cores, which hyper-threads and cgroup limits make
#: common; the thread count is chosen on purpose (:func:`_threads`), so its warnings are off. The only other
#: warning it has (round-off for more than ~1/eps modes per axis) cannot occur at CT image sizes.
_FINUFFT_OPTS = {"showwarn": 0}


def _torch_threads() -> int | None:
    """torch's intra-op thread count if torch is in use in this process (never imported for it)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def _threads() -> int:
    """Threads for FINUFFT and scipy.fft: the CPUs this process may use (at most 8), and no more than
    OMP_NUM_THREADS or torch's thread setting ask for (FINUFFT would otherwise take every CPU however
    the user limited the process)."""
    n = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 8)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    t = _torch_threads()
    if t is not None and t > 0:
        n = min(n, t)
    return max(1, n)


def project_fourier(mu: np.ndarray, geom: Geometry) -> np.ndarray:
    """Polar Fourier samples ``P(theta, omega) = sum_x mu(x) exp(-i omega x.theta)`` of images (B, H, W)
    -> complex64 (B, views, n_freq): a 2D type-2 NUFFT (Fourier-slice theorem)."""
    import finufft

    b = mu.shape[0]
    x, y = geom.points
    # FINUFFT modeord=0 puts mode 0 at index N//2: the image centre is pixel (h//2, w//2)
    c = np.ascontiguousarray(mu, dtype=np.complex64)
    out = finufft.nufft2d2(x, y, c, isign=-1, eps=NUFFT_EPS, nthreads=_threads(), **_FINUFFT_OPTS)
    return out.reshape(b, geom.views, geom.omega.size)


def fourier_to_sinogram(pf: np.ndarray, geom: Geometry) -> np.ndarray:
    """Polar Fourier samples -> float32 sinogram (B, views, n_det) of line integrals (pixel units)."""
    import scipy.fft

    sino = scipy.fft.irfft(pf * geom.det_shift, n=geom.n_pad, axis=-1, workers=_threads())
    return np.ascontiguousarray(sino[..., : geom.n_det], dtype=np.float32)


def sinogram_to_fourier(sino: np.ndarray, geom: Geometry) -> np.ndarray:
    import scipy.fft

    f = scipy.fft.rfft(np.asarray(sino, np.float32), n=geom.n_pad, axis=-1, workers=_threads())
    return f * geom.det_shift.conj()


def backproject_fourier(q: np.ndarray, geom: Geometry) -> np.ndarray:
    """Back-project filtered polar Fourier samples (B, views, n_freq) -> images (B, H, W).

    ``b(x) = (pi / views) * sum_theta q_theta(x . theta)`` with band-limited interpolation along the
    detector: the real part of a type-1 NUFFT of ``w Q / n_pad`` (``w`` folds in the negative
    frequencies).
    """
    import finufft

    b = q.shape[0]
    x, y = geom.points
    c = q * (geom.half_weights * (np.pi / (geom.views * geom.n_pad))).astype(np.float32)
    c = np.ascontiguousarray(c.reshape(b, -1), dtype=np.complex64)
    img = finufft.nufft2d1(x, y, c, n_modes=(geom.h, geom.w), isign=1, eps=NUFFT_EPS, nthreads=_threads(),
                           **_FINUFFT_OPTS)
    return img.real.reshape(b, geom.h, geom.w)


def radon(image: np.ndarray, views: int = 180) -> np.ndarray:
    """Parallel-beam sinogram (views, n_det) of a 2D image (pixel units; detector centre at n_det//2)."""
    geom = _geometry(*image.shape, views)
    return fourier_to_sinogram(project_fourier(np.asarray(image, float)[None], geom), geom)[0]


