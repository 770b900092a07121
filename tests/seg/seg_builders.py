"""Toy volumes and datasets for the seg tests (imported by conftest.py and the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from styleseg.io.dataset import DatasetWriter
from styleseg.io.volume import Volume
from styleseg.labels import LabelSchema


def toy_case(rng: np.random.Generator, n: int = 6, size: int = 32, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HU volume and labels: body disc (40 HU), two lungs (-800 HU), a heart (120 HU), a cord (300 HU)."""
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    body = (yy - c) ** 2 / (0.45 * size) ** 2 + (xx - c) ** 2 / (0.47 * size) ** 2 < 1
    lung_l = (yy - c + 2) ** 2 / 36 + (xx - c - 7 - shift) ** 2 / 16 < 1  # patient's left = image right
    lung_r = (yy - c + 2) ** 2 / 36 + (xx - c + 7 - shift) ** 2 / 16 < 1
    heart = (yy - c - 3) ** 2 + (xx - c - shift) ** 2 < 9
    cord = (yy - c - 11) ** 2 + (xx - c) ** 2 < 3
    hu = np.full((size, size), -1000.0)
    lab = np.zeros((size, size), np.uint8)
    for mask, v, val in ((body, 40.0, 6), (lung_l, -800.0, 1), (lung_r, -800.0, 2), (heart, 150.0, 3),
                         (cord, 300.0, 5)):
        hu[mask] = v
        lab[mask] = val
    vol = np.stack([hu + rng.normal(0, 15, hu.shape) for _ in range(n)]).astype(np.int16)
    return vol, np.stack([lab] * n)


def write_toy_dataset(out: Path, n_cases: int = 4, missing_heart: tuple[int, ...] = (), seed: int = 0,
                      spacing: float = 1.0, size: int = 32, n: int = 6) -> Path:
    schema = LabelSchema.default()
    rng = np.random.default_rng(seed)
    with DatasetWriter(out, "toy", schema) as w:
        for i in range(n_cases):
            vol, lab = toy_case(rng, n=n, size=size, shift=i % 3 - 1)
            ann = ["lung_left", "lung_right", "heart", "spinal_cord", "body"]
            if i in missing_heart:
                lab = lab.copy()
                lab[lab == 3] = 6  # unannotated heart: inside the body, labelled body
                ann.remove("heart")
            img = Volume(vol, (spacing, spacing, 3.0))
            w.add_case(f"toy{i:02d}", img, img.with_array(lab), annotated=ann)
    return out


def slab(h: int = 40, w: int = 48, box=(10, 29, 6, 41)) -> np.ndarray:
    """Air with one soft-tissue rectangle (rows y0..y1, columns x0..x1 inclusive) as the body."""
    hu = np.full((h, w), -1000.0, np.float32)
    y0, y1, x0, x1 = box
    hu[y0:y1 + 1, x0:x1 + 1] = 40.0
    return hu
