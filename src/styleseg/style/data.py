"""The data of generator training: the labelled source slices, the style set, and deterministic crop batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from styleseg.errors import InputError


@dataclass
class Source:
    """The labelled source slices generators learn from."""

    images: np.ndarray  # (N, H, W) int16 HU
    labels: np.ndarray  # (N, H, W) uint8


def load_source(source: Path):
    """The labelled source slices (all slices of labelled cases that contain a label)."""
    from styleseg.data.slices import SliceStore
    from styleseg.io.dataset import Dataset

    ds = Dataset(source)
    store = SliceStore.from_dataset(ds, label_role="labelsTr", only_labelled_slices=True)
    if len(store) == 0 or store.labels is None:
        raise InputError(source, "the source dataset has no labelled slices (labelsTr)",
                         "generators learn from annotated source slices; import labelled data first")
    return ds, Source(store.images, store.labels)


def load_styles(styles: Path, schema):
    """The style set, checked: every style slice needs a label map whose values are in the schema."""
    from styleseg.style.styleset import STYLES_JSON, StyleSet, label_name

    ss = StyleSet.load(styles)
    ss.require_labels(styles)
    if not ss.styles:
        raise InputError(Path(styles) / STYLES_JSON, "the style set is empty", "pick at least one style slice")
    for s in ss.styles:
        schema.check_label_values(s.label_map, str(Path(styles) / label_name(s.index)))
    return ss


def sample_batch(src: Source, crop: int, batch: int, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic batch of crops for (seed, step): resuming reproduces the same batches."""
    from styleseg.data.slices import random_crop_indices

    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, len(src.images), batch)
    h, w = src.images.shape[1:]
    c = min(crop, h - h % 4, w - w % 4)
    imgs, labs = [], []
    for i in idx:
        y0, x0 = random_crop_indices(rng, (h, w), c, weight_mask=src.labels[i] > 0)
        imgs.append(src.images[i, y0:y0 + c, x0:x0 + c])
        labs.append(src.labels[i, y0:y0 + c, x0:x0 + c])
    return np.stack(imgs), np.stack(labs)


