"""From volumes to 2D training slices: CT windowing, an in-memory slice store, and crops.

Texture lives at native pixel spacing, so nothing here resamples in-plane: training on a CPU uses
random crops at native spacing (both networks are fully convolutional) and inference uses whole
slices. Downsampling is a separate, explicit comparison arm, never a default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from styleseg.io.dataset import Dataset
from styleseg.labels import LabelSchema

#: (centre, width) in HU
WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),  # the paper's choice (W400/L40)
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}


def window(hu: np.ndarray, centre: float = 40.0, width: float = 400.0) -> np.ndarray:
    """Map HU to [0, 1] with a CT window (values outside are clipped)."""
    lo = centre - width / 2.0
    return np.clip((np.asarray(hu, np.float32) - lo) / width, 0.0, 1.0)


@dataclass
class SliceStore:
    """All axial slices of a set of cases in memory: HU images, label maps, and which structures
    each slice's case annotated (a boolean (N, num_classes) table; background is always known).

    For chest CT at 512 x 512 this is ~0.5 MB per slice (int16 + uint8), so a few thousand slices fit.
    """

    images: np.ndarray  # (N, H, W) int16 HU
    labels: np.ndarray | None  # (N, H, W) uint8, or None for unannotated data
    annotated: np.ndarray  # (N, num_classes) bool
    case_ids: list[str]  # per slice
    slice_index: np.ndarray  # (N,) index of the slice within its case
    spacing: np.ndarray  # (N, 2) in-plane spacing (x, y) in mm
    schema: LabelSchema = field(default_factory=LabelSchema.default)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def from_dataset(cls, ds: Dataset, cases: Sequence[str] | None = None, label_role: str | None = "labelsTr",
                     require_labels: bool = True, only_labelled_slices: bool = False) -> SliceStore:
        """Load the slices of ``cases`` (default: all). Slices of different in-plane size are
        centre-padded/cropped to the largest size with air (-1024 HU) and background labels."""
        recs = [ds.case(c) for c in cases] if cases is not None else list(ds.cases)
        imgs, labs, ann, cids, sidx, sps = [], [], [], [], [], []
        nc = ds.schema.num_classes
        for rec in recs:
            vol = ds.load_image(rec.case_id)
            lab = None
            if rec.labels is not None and (label_role is None or rec.labels == label_role):
                lab = ds.load_label(rec.case_id, image=vol)
            if lab is None and require_labels:
                continue
            row = np.zeros(nc, bool)
            row[0] = True
            for n in rec.annotated:
                if n in ds.schema.names:
                    row[ds.schema.value(n)] = True
            for k in range(vol.shape[0]):
                if only_labelled_slices and lab is not None and not (lab.array[k] > 0).any():
                    continue
                imgs.append(np.asarray(vol.array[k], np.int16))
                labs.append(None if lab is None else np.asarray(lab.array[k], np.uint8))
                ann.append(row)
                cids.append(rec.case_id)
                sidx.append(k)
                sps.append(vol.spacing[:2])
        if not imgs:
            return cls(np.zeros((0, 1, 1), np.int16), None, np.zeros((0, nc), bool), [], np.zeros(0, int),
                       np.zeros((0, 2)), ds.schema)
        h = max(i.shape[0] for i in imgs)
        w = max(i.shape[1] for i in imgs)
        images = np.stack([_fit(i, h, w, -1024) for i in imgs])
        labels = None if any(lb is None for lb in labs) else np.stack([_fit(lb, h, w, 0) for lb in labs])
        return cls(images, labels, np.stack(ann), cids, np.asarray(sidx), np.asarray(sps, float), ds.schema)


def _fit(a: np.ndarray, h: int, w: int, fill: float) -> np.ndarray:
    """Centre-pad (or centre-crop) a 2D array to (h, w)."""
    out = np.full((h, w), fill, a.dtype)
    ah, aw = a.shape
    sh, sw = min(ah, h), min(aw, w)
    oy, ox = (h - sh) // 2, (w - sw) // 2
    iy, ix = (ah - sh) // 2, (aw - sw) // 2
    out[oy:oy + sh, ox:ox + sw] = a[iy:iy + sh, ix:ix + sw]
    return out


def random_crop_indices(rng: np.random.Generator, shape: tuple[int, int], size: int,
                        weight_mask: np.ndarray | None = None) -> tuple[int, int]:
    """Top-left corner of a ``size`` crop; if ``weight_mask`` is given, the crop centre is drawn
    from its nonzero pixels (foreground-oversampling, as nnU-Net does)."""
    h, w = shape
    size_h, size_w = min(size, h), min(size, w)
    if weight_mask is not None and weight_mask.any():
        ys, xs = np.nonzero(weight_mask)
        j = int(rng.integers(len(ys)))
        cy, cx = int(ys[j]), int(xs[j])
        y0 = int(np.clip(cy - size_h // 2, 0, h - size_h))
        x0 = int(np.clip(cx - size_w // 2, 0, w - size_w))
        return y0, x0
    return int(rng.integers(0, h - size_h + 1)), int(rng.integers(0, w - size_w + 1))
