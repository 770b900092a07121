"""In-plane resampling between an input's pixel spacing and a model's training spacing (as nnU-Net does).

Real archives mix 0.6-1.0 mm pixels, and a U-Net trained at ~0.98 mm sees organs of the wrong size in pixels on a
0.62 mm slice. The predictor therefore resamples each slice to the model's training spacing (``model.json``
``train_spacing_mm``) for the network and brings the *logits* back to the input grid before the argmax, so the
labels lie exactly on the input grid (nnU-Net resamples probabilities the same way):

- images: linear interpolation with an anti-aliasing filter when shrinking (``F.interpolate(mode="bilinear",
  antialias=True)``: a triangle filter widened by the zoom factor, so a smaller grid averages like ``area``);
- logits back to the input grid: bilinear; label maps (style slices, references): nearest neighbour.

Resampling is not free: interpolation low-passes the noise, i.e. it changes the very texture styleseg models
(docs/seg.md has the measurement). So a slice within :data:`RESAMPLE_TOLERANCE` of the training spacing is left at
its native grid, and style slices enter the generators through the same rule and the same interpolation
(:func:`resample_slice`), so a generator learns the texture the U-Net will see at test time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

#: relative in-plane spacing difference up to which a slice stays on its native grid: the U-Net's training
#: scale augmentation (``scale_min``/``scale_max`` 0.9-1.1) already shows it organs 10 % larger or smaller, while
#: interpolation, even by 3 %, lowers a real slice's noise std by ~20 % (docs/seg.md, "Pixel spacing")
RESAMPLE_TOLERANCE = 0.10
#: ratio to the training spacing beyond which a prediction is resampled but warned about (texture then differs
#: more than any measured kernel pair) and beyond which it is refused unless forced
WARN_RATIO = 2.0
REFUSE_RATIO = 4.0


def spacing_ratio(spacing_xy: Sequence[float], train_mm: float) -> float:
    """max(r, 1/r) of the mean in-plane spacing to the training spacing (1.0: the same)."""
    r = float(np.mean([float(s) for s in spacing_xy[:2]])) / float(train_mm)
    return max(r, 1.0 / r)


def network_size(shape_hw: Sequence[int], spacing_xy: Sequence[float], train_mm: float | None,
                 tolerance: float = RESAMPLE_TOLERANCE) -> tuple[int, int] | None:
    """The (H, W) of a slice of ``shape_hw`` at spacing ``spacing_xy`` = (x, y) mm when resampled to ``train_mm``;
    None when no resampling is needed (no training spacing, or every axis within ``tolerance``)."""
    if not train_mm:
        return None
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    if abs(sx / train_mm - 1.0) <= tolerance and abs(sy / train_mm - 1.0) <= tolerance:
        return None
    h, w = int(shape_hw[0]), int(shape_hw[1])
    return max(1, int(round(h * sy / train_mm))), max(1, int(round(w * sx / train_mm)))


def resample_images(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, C, H, W) HU -> (B, C, *size): linear, anti-aliased when shrinking."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, K, h, w) logits -> (B, K, *size), bilinear (then argmax on the input grid)."""
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def resample_labels(lab: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(N, H, W) or (H, W) integer labels -> (..., *size), nearest neighbour (pixel centres, no new values)."""
    a = np.asarray(lab)
    flat = a[None] if a.ndim == 2 else a
    h, w = flat.shape[-2:]
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    out = flat[:, ys[:, None], xs[None, :]]
    return out[0] if a.ndim == 2 else out


def resample_slice(hu: np.ndarray, spacing_xy: Sequence[float], train_mm: float | None,
                   tolerance: float = RESAMPLE_TOLERANCE) -> tuple[np.ndarray, tuple[float, float]]:
    """A (H, W) or (N, H, W) HU array as the network would see it: resampled to ``train_mm`` by the rule of
    :func:`network_size` (unchanged within ``tolerance``). Returns the array (float32) and its new (x, y)
    spacing. The predictor and the style set use this one function, so both see the same texture."""
    a = np.asarray(hu, np.float32)
    flat = a[None] if a.ndim == 2 else a
    size = network_size(flat.shape[-2:], spacing_xy, train_mm, tolerance)
    if size is None:
        return a, (float(spacing_xy[0]), float(spacing_xy[1]))
    out = resample_images(torch.from_numpy(np.ascontiguousarray(flat))[:, None], size)[:, 0].numpy()
    new = (float(spacing_xy[0]) * flat.shape[-1] / size[1], float(spacing_xy[1]) * flat.shape[-2] / size[0])
    return (out[0] if a.ndim == 2 else out), new
