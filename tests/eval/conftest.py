"""Tiny synthetic reference datasets and predictions (real NIfTI files) for the eval tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from styleseg.io.dataset import DatasetWriter
from styleseg.io.volume import Volume, write_nifti
from styleseg.labels import LabelSchema

SPACING = (0.8, 0.8, 3.0)
SHAPE = (3, 40, 48)


def make_case(rng: np.random.Generator, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A toy thorax: body ellipse, two lungs, heart, cord; returns (HU int16, label uint8)."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    lab = np.zeros(SHAPE, np.uint8)
    body = ((y - 20) / 17.0) ** 2 + ((x - 24) / 21.0) ** 2 <= 1
    lab[body] = 6
    lab[body & (((y - 18) / 9.0) ** 2 + ((x - 13 - shift) / 6.0) ** 2 <= 1)] = 1
    lab[body & (((y - 18) / 9.0) ** 2 + ((x - 35) / 6.0) ** 2 <= 1)] = 2
    lab[body & (((y - 22) / 5.0) ** 2 + ((x - 24) / 4.0) ** 2 <= 1)] = 3
    lab[body & (((y - 33) / 2.0) ** 2 + ((x - 24) / 2.0) ** 2 <= 1)] = 5
    hu = np.full(SHAPE, -1000.0)
    hu[lab == 6] = 40
    hu[(lab == 1) | (lab == 2)] = -850
    hu[lab == 3] = 100
    hu[lab == 5] = 30
    hu += rng.normal(0, 20, SHAPE)
    return hu.astype(np.int16), lab


@pytest.fixture
def ref_dataset(tmp_path: Path) -> Path:
    """3 cases: c0, c1 fully annotated; c2 without a heart contour (heart left as body)."""
    rng = np.random.default_rng(0)
    schema = LabelSchema.default()
    out = tmp_path / "ref"
    with DatasetWriter(out, "toy-ref", schema) as w:
        for i in range(3):
            hu, lab = make_case(rng, shift=i)
            annotated = ["lung_left", "lung_right", "heart", "spinal_cord", "body"]
            if i == 2:
                lab[lab == 3] = 6
                annotated.remove("heart")
            img = Volume(hu, SPACING)
            w.add_case(f"c{i}", img, img.with_array(lab), annotated=annotated, derived=["body"],
                       label_role="labelsRef")
    return out


def _write_pred(folder: Path, case: str, lab: np.ndarray, spacing=SPACING) -> Path:
    return write_nifti(Volume(lab.astype(np.uint8), spacing), folder / f"{case}.nii.gz")


@pytest.fixture
def write_pred():
    """write_pred(folder, case, label_array, spacing=SPACING) -> path of PRED/<case>.nii.gz."""
    return _write_pred
