"""How a CT slice becomes U-Net input: the one encoding that training writes and prediction reads back.

:class:`InputSpec` holds every choice (CT windows as channels, 2.5D context slices, position channels and
the low-pass of their body frame, the low-resolution arm's downsampling); training writes it into
model.json (``InputSpec.to_model_json``) and the predictor reads it back (``InputSpec.from_model_json``),
so the two can never disagree on a default. The functions below are the pieces both sides use:

- canonical orientation (:func:`canonical_flips`, :func:`to_canonical`): axial LPS in-plane, so left and
  right lungs are where the network learned them;
- windows (:func:`window_channels`), padded in HU with air before windowing, so every window sees air;
- position channels (:func:`body_frame`, :func:`position_maps`): each pixel's place in its slice's body box;
- the predictor's crop to the body (:func:`body_box`);
- 2.5D stacks (:func:`context_stack`) and area downsampling (:func:`downsample_hu`, :func:`downsample_label`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from styleseg.data.slices import WINDOWS
from styleseg.errors import ConfigError, InputError

AIR_HU = -1024.0
#: Gaussian low-pass (px) before the body threshold of :func:`body_frame` in models trained since it existed
FRAME_SMOOTH_PX = 2.0
N_POSITION = 2


@dataclass(frozen=True)
class InputSpec:
    """The model-input encoding of a segmentation model (written into model.json by training).

    ``windows``: CT windows as channels (:data:`styleseg.data.slices.WINDOWS`); ``context``: neighbouring
    slices per side as extra channels (0: 2D); ``position``: two position channels in the slice's body box;
    ``position_smooth_px``: the low-pass of the body frame; ``downsample``: area downsampling factor of the
    low-resolution comparison arm (1: native spacing)."""

    windows: tuple[str, ...] = ("soft_tissue",)
    context: int = 0
    position: bool = False
    position_smooth_px: float = FRAME_SMOOTH_PX
    downsample: int = 1

    def __post_init__(self) -> None:
        bad = [w for w in self.windows if w not in WINDOWS]
        if bad or not self.windows:
            raise ConfigError(f"windows: unknown window(s) {bad}; choose from {sorted(WINDOWS)}")
        if not 0 <= self.context <= 4:
            raise ConfigError(f"context ({self.context}) must be 0 (2D) to 4 neighbouring slices per side")
        if self.downsample < 1:
            raise ConfigError(f"downsample ({self.downsample}) must be >= 1")

    @property
    def n_position(self) -> int:
        return N_POSITION if self.position else 0

    @property
    def stack(self) -> int:
        """HU slices per sample: the slice and its context neighbours."""
        return 2 * self.context + 1

    @property
    def in_channels(self) -> int:
        return len(self.windows) * self.stack + self.n_position

    def to_model_json(self) -> dict[str, Any]:
        """The model.json keys of this encoding (flat, as every model since the first has them)."""
        d: dict[str, Any] = {"windows": list(self.windows), "context": self.context, "position": self.position,
                             "downsample": self.downsample}
        if self.position:
            d["position_smooth_px"] = self.position_smooth_px
        return d

    @classmethod
    def from_model_json(cls, meta: Mapping[str, Any]) -> InputSpec:
        """Read the encoding back. Models trained before the body frame's low-pass existed have no
        ``position_smooth_px`` and were trained without it (0), so that is their default."""
        return cls(windows=tuple(meta.get("windows", ("soft_tissue",))), context=int(meta.get("context", 0)),
                   position=bool(meta.get("position", False)),
                   position_smooth_px=float(meta.get("position_smooth_px", 0.0)),
                   downsample=int(meta.get("downsample", 1)))

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net's input from a batch (B, C, H, W) whose first C - n_position channels are HU (a slice or
        a 2.5D stack) and whose last n_position are position maps (passed unchanged)."""
        return network_input(x, self.windows, self.n_position)


# --- orientation ---------------------------------------------------------------------------------
def canonical_flips(direction: Sequence[float], path: Any = None) -> tuple[bool, bool]:
    """(flip_y, flip_x) that bring an axial volume to the identity (LPS) in-plane orientation.

    Non-axial or in-plane-rotated volumes are refused: a model trained on axial slices would
    silently mislabel them (left and right lungs are different labels).
    """
    d = np.asarray(direction, float).reshape(3, 3)
    if abs(abs(d[2, 2]) - 1) > 1e-3 or abs(abs(d[0, 0]) - 1) > 1e-3 or abs(abs(d[1, 1]) - 1) > 1e-3:
        raise InputError(path, f"orientation is not axial (direction cosines {np.round(d, 3).tolist()}); "
                         "the U-Net works on axial slices",
                         "reorient the volume to axial LPS first (e.g. SimpleITK.DICOMOrient(img, 'LPS'))")
    return bool(d[1, 1] < 0), bool(d[0, 0] < 0)


def to_canonical(arr: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """Flip (z, y, x) or (y, x) arrays into canonical orientation (an involution: also undoes it)."""
    if flips[0]:
        arr = arr[..., ::-1, :]
    if flips[1]:
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr)


# --- windows and channels ------------------------------------------------------------------------
def window_channels(hu: torch.Tensor, windows: Sequence[str]) -> torch.Tensor:
    """(B, C, H, W) HU -> (B, len(windows) * C, H, W) in [0, 1] (the mapping of ``data.slices.window``),
    window-major: C > 1 are the slices of a 2.5D stack."""
    chans = []
    for name in windows:
        centre, width = WINDOWS[name]
        lo = centre - width / 2.0
        chans.append(((hu - lo) / width).clamp_(0.0, 1.0))
    return torch.cat(chans, dim=1)


def network_input(x: torch.Tensor, windows: Sequence[str], n_position: int = 0) -> torch.Tensor:
    """Windows of the HU channels of ``x`` (B, C, H, W), its last ``n_position`` channels passed unchanged."""
    if not n_position:
        return window_channels(x, windows)
    return torch.cat([window_channels(x[:, :-n_position], windows), x[:, -n_position:]], dim=1)


# --- position channels ---------------------------------------------------------------------------
def body_frame(hu: np.ndarray, smooth_px: float = FRAME_SMOOTH_PX) -> np.ndarray:
    """(N, 4) float: for each HU slice of ``hu`` (N, H, W) the centre and half-extent (cy, cx, hy, hx), in
    pixels, of the bounding box of its body (:func:`styleseg.labels.derive_body`, slice by slice, on the slice
    low-passed by a Gaussian of ``smooth_px``); the whole slice where no body is found.

    The low-pass keeps noise from breaking the body: on low-dose and generated slices fat at -100 HU with
    ~100 HU of noise falls below the -400 HU threshold often enough that the opening inside ``derive_body``
    splits a thin chest wall, and the frame shrinks to a fragment (a quarter of the demo's augmented slices
    without it; none with 1-2 px)."""
    from scipy import ndimage as ndi

    from styleseg.labels import body_bounds

    hu = np.asarray(hu)
    if hu.ndim == 2:
        hu = hu[None]
    out = np.empty((hu.shape[0], 4))
    for i, s in enumerate(hu):
        if smooth_px > 0:
            s = ndi.gaussian_filter(np.asarray(s, np.float32), smooth_px)
        box = body_bounds(s)
        if box is None:
            h, w = s.shape
            out[i] = ((h - 1) / 2, (w - 1) / 2, h / 2, w / 2)
        else:
            y0, y1, x0, x1 = box
            out[i] = ((y0 + y1) / 2, (x0 + x1) / 2, max((y1 - y0) / 2, 1.0), max((x1 - x0) / 2, 1.0))
    return out


#: px of air kept around the body by :func:`body_box` (the predictor's crop): structures stay this far from the
#: crop's edge, well inside what the network saw of its 160 px training crops' context
BOX_MARGIN_PX = 32


def body_box(hu: np.ndarray, margin: int = BOX_MARGIN_PX, multiple: int = 1, smooth_px: float = FRAME_SMOOTH_PX,
             threshold: float = -400.0) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1): one box around the body of every HU slice of ``hu`` ((H, W) or (..., H, W)), grown by
    ``margin`` px per side, its height and width rounded up to a multiple of ``multiple`` and kept inside the
    slice; None when no slice shows a body.

    The body is found as in :func:`styleseg.labels.derive_body` (threshold, a 5 x 5 opening that detaches a thin
    table), on the pixelwise maximum of the slices low-passed by ``smooth_px``, and unlike there every component of
    at least 1% of the largest one counts, so arms lying apart from the chest stay inside. The maximum makes it one
    2D pass per batch, and its mask contains each slice's own. The predictor runs the network on this box only
    (about half of a 512 x 512 chest slice, BENCHMARKS.md) and carries the logits at its edge (air) outward."""
    from scipy import ndimage as ndi

    from styleseg.labels import body_components

    hu = np.asarray(hu, np.float32)
    proj = hu.reshape(-1, *hu.shape[-2:]).max(0)
    if smooth_px > 0:
        proj = ndi.gaussian_filter(proj, smooth_px)
    lab, n = body_components(proj[None], threshold)
    lab = lab[0]
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    keep = np.zeros(n + 1, bool)
    keep[1:] = sizes >= 0.01 * sizes.max()
    ys, xs = np.nonzero(keep[lab])

    def span(lo: int, hi: int, size: int) -> tuple[int, int]:
        m = max(int(multiple), 1)
        extent = min(-(-(hi - lo + 1 + 2 * margin) // m) * m, size)
        start = min(max((lo + hi + 1 - extent) // 2, 0), size - extent)
        return start, start + extent

    return (*span(int(ys.min()), int(ys.max()), proj.shape[0]), *span(int(xs.min()), int(xs.max()), proj.shape[1]))


def position_maps(frame: Sequence[float], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(2, ...) float32 position channels for pixels at rows ``y`` and columns ``x`` (broadcastable arrays,
    full-slice pixel coordinates): ((x - cx) / hx, (y - cy) / hy) in the slice's body ``frame`` (cy, cx, hy, hx),
    i.e. -1..1 from the patient's right to left edge and front to back. It tells a crop which side of the body
    it shows (a crop of one lung does not), independent of field of view, pixel spacing and patient size."""
    cy, cx, hy, hx = (float(v) for v in frame)
    y, x = np.broadcast_arrays(np.asarray(y, np.float64), np.asarray(x, np.float64))
    return np.stack([(x - cx) / hx, (y - cy) / hy]).astype(np.float32)


# --- resolution and 2.5D ---------------------------------------------------------------------------
def downsample_hu(hu: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average (B, C, H, W) by ``factor`` (output size ceil(H / factor))."""
    if factor <= 1:
        return hu
    h, w = hu.shape[-2:]
    return F.interpolate(hu, size=(math.ceil(h / factor), math.ceil(w / factor)), mode="area")


def downsample_label(lab: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour downsampling of (B, 1, H, W) labels (same output size as downsample_hu)."""
    if factor <= 1:
        return lab
    h, w = lab.shape[-2:]
    return F.interpolate(lab.float(), size=(math.ceil(h / factor), math.ceil(w / factor)),
                         mode="nearest").to(lab.dtype)


def context_stack(hu: np.ndarray, start: int, stop: int, context: int, before: np.ndarray | None = None,
                  after: np.ndarray | None = None) -> np.ndarray:
    """(stop - start, 2 * context + 1, H, W): slices ``start:stop`` of ``hu`` (N, H, W) each with its
    ``context`` neighbours per side, taken from ``before``/``after`` (the slices just outside ``hu``, when
    ``hu`` is a chunk of a longer volume) and repeating the edge slice at the ends of the volume."""
    nb = 0 if before is None else len(before)
    full = hu if not nb and (after is None or not len(after)) else np.concatenate(
        [a for a in (before, hu, after) if a is not None and len(a)])
    zs = np.arange(start, stop)[:, None] + nb + np.arange(-context, context + 1)[None]
    return full[np.clip(zs, 0, len(full) - 1)]
