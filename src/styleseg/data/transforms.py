"""Data transforms.

Part 1 (this block, used by ``seg.train``): geometric TRAINING AUGMENTATION of (HU slice, label)
pairs: random crop (with foreground oversampling), small rotation and scaling, and elastic
deformation (Simard et al. 2003, as in nnU-Net and MONAI ``Rand2DElastic``). Never left-right flips:
left and right lungs are different labels. Everything is sampled in a single resampling step
(``map_coordinates`` of the output crop's coordinates in the full slice), so rotations never pull
in padding at crop borders and the cost scales with the crop, not the slice.

Part 2 (below, added separately): intensity transforms of the comparison arms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# ------------------------------------------------------------------------------------------------
# Part 1: geometric training augmentation
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainAugmentConfig:
    """Geometric training augmentation (all angles in degrees, elastic sizes in pixels)."""

    crop: int = 160
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    elastic_prob: float = 0.3
    elastic_alpha: float = 6.0  # displacement amplitude (pixels)
    elastic_grid: int = 5  # control points per side of the crop
    foreground_prob: float = 0.6  # crop centred on a random organ pixel (nnU-Net's oversampling)
    enabled: bool = True


class ForegroundIndex:
    """The organ pixels of one label slice, found when first asked for and kept: which of ``classes`` are
    present (in class order), and the (rows, columns) of a class's pixels in np.nonzero order. What
    :func:`sample_crop_centre` draws from; a training run visits each slice many times."""

    def __init__(self, label: np.ndarray, classes: np.ndarray):
        self.label = label
        self.classes = np.asarray(classes, int)
        self._present: list[int] | None = None
        self._pixels: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def present(self) -> list[int]:
        if self._present is None:
            counts = np.bincount(self.label.ravel(), minlength=int(self.classes.max(initial=0)) + 1)
            self._present = [int(c) for c in self.classes if counts[c] > 0]
        return self._present

    def pixels(self, cls: int) -> tuple[np.ndarray, np.ndarray]:
        if cls not in self._pixels:
            self._pixels[cls] = np.nonzero(self.label == cls)
        return self._pixels[cls]


def sample_crop_centre(rng: np.random.Generator, label: np.ndarray | None, crop: int,
                       foreground_classes: np.ndarray, foreground_prob: float,
                       fg: ForegroundIndex | None = None) -> tuple[float, float]:
    """Crop centre (y, x): with probability ``foreground_prob`` a random pixel of a random organ class
    present in the slice (classes drawn uniformly, so small organs are seen as often as lungs),
    otherwise uniform over positions where the crop fits. ``fg``: a kept :class:`ForegroundIndex` of
    ``label`` (the same draws with or without it)."""
    h, w = (label.shape if label is not None else (crop, crop))
    if label is not None and len(foreground_classes) and rng.random() < foreground_prob:
        index = fg if fg is not None else ForegroundIndex(label, foreground_classes)
        present = index.present()
        if present:
            ys, xs = index.pixels(present[int(rng.integers(len(present)))])
            j = int(rng.integers(len(ys)))
            return float(ys[j]), float(xs[j])
    half_h, half_w = min(crop, h) / 2.0, min(crop, w) / 2.0
    return float(rng.uniform(half_h, h - half_h)), float(rng.uniform(half_w, w - half_w))


def train_augment_coords(rng: np.random.Generator, centre: tuple[float, float], cfg: TrainAugmentConfig,
                         ) -> np.ndarray:
    """Source coordinates (2, crop, crop) in the full slice for one augmented crop."""
    n = cfg.crop
    g = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    yy, xx = np.meshgrid(g, g, indexing="ij")
    if cfg.enabled:
        a = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        s = rng.uniform(*cfg.scale)
        ca, sa = np.cos(a) * s, np.sin(a) * s
        y = ca * yy - sa * xx
        x = sa * yy + ca * xx
        if rng.random() < cfg.elastic_prob:
            k = cfg.elastic_grid
            basis = _zoom_basis(k, n)
            dy = np.tensordot(rng.normal(0, cfg.elastic_alpha, (k, k)), basis, 2)
            dx = np.tensordot(rng.normal(0, cfg.elastic_alpha, (k, k)), basis, 2)
            y, x = y + dy, x + dx
    else:
        y, x = yy, xx
    return np.stack([y + centre[0], x + centre[1]])


@functools.lru_cache(maxsize=8)
def _zoom_basis(k: int, n: int) -> np.ndarray:
    """(k, k, n, n): ``ndi.zoom(e_ab, n / k, order=3)[:n, :n]`` of every basis grid e_ab. Zooming is linear, so a
    control grid's displacement field is its coefficients against this basis: the cubic-spline zoom of the
    elastic deformation without a spline evaluation per crop."""
    out = np.empty((k, k, n, n))
    for a in range(k):
        for b in range(k):
            e = np.zeros((k, k))
            e[a, b] = 1.0
            out[a, b] = ndi.zoom(e, n / k, order=3)[:n, :n]
    return out


class TrainAugment:
    """Picklable training augmentation: ``(hu (H, W), label (H, W) | None, rng) -> (hu crop, label crop)``;
    ``hu`` may also be (C, H, W) (a slice with its neighbours), every channel then gets the same transform.

    ``foreground_classes``: label values to oversample (organs; not background/body).
    """

    def __init__(self, cfg: TrainAugmentConfig, foreground_classes: tuple[int, ...] = ()):
        self.cfg = cfg
        self.fg = np.asarray(foreground_classes, int)

    def __call__(self, hu: np.ndarray, label: np.ndarray | None, rng: np.random.Generator,
                 return_coords: bool = False, fg: ForegroundIndex | None = None) -> tuple[np.ndarray, ...]:
        """``return_coords``: also return the (2, crop, crop) source coordinates (y, x) in the full slice of
        every crop pixel (the same random draws either way); ``fg``: a kept :class:`ForegroundIndex` of
        ``label``."""
        centre = sample_crop_centre(rng, label, self.cfg.crop, self.fg, self.cfg.foreground_prob, fg)
        coords = train_augment_coords(rng, centre, self.cfg)
        hu = np.asarray(hu, np.float32)
        if hu.ndim == 3:  # (C, H, W): neighbouring slices (2.5D context), all moved by the same transform
            img = np.stack([ndi.map_coordinates(c, coords, order=1, mode="constant", cval=-1024.0) for c in hu])
        else:
            img = ndi.map_coordinates(hu, coords, order=1, mode="constant", cval=-1024.0)
        lab = None
        if label is not None:
            lab = ndi.map_coordinates(np.asarray(label), coords, order=0, mode="constant", cval=0)
            lab = lab.astype(np.uint8)
        if return_coords:
            return img.astype(np.float32), lab, coords
        return img.astype(np.float32), lab


# ------------------------------------------------------------------------------------------------
# Part 2: intensity transforms of the comparison arms (added below)
# ------------------------------------------------------------------------------------------------
