"""Evaluation on real chest CT labels (../shared/data/nsclc): partial annotation and HD95 in mm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from styleseg.eval.evaluate import evaluate
from styleseg.io.dataset import Dataset, DatasetWriter
from styleseg.io.volume import Volume, read_nifti, write_nifti
from styleseg.labels import LabelSchema

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "nsclc"
pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not (DATA / "cases.json").exists(),
                                 reason=f"real CT data not found at {DATA} (absent in a fresh clone)")]


def _middle(vol: Volume, lab: Volume, n: int = 6) -> tuple[Volume, Volume]:
    """n slices around the slice with the most heart (keeps the test small), geometry kept exact."""
    counts = (lab.array == 3).sum(axis=(1, 2)) + (lab.array == 1).sum(axis=(1, 2)) // 100
    z0 = int(np.clip(int(np.argmax(counts)) - n // 2, 0, vol.shape[0] - n))
    origin = tuple(vol.index_to_physical([[z0, 0, 0]])[0])
    v = Volume(vol.array[z0: z0 + n], vol.spacing, origin, vol.direction)
    return v, v.with_array(lab.array[z0: z0 + n].astype(np.uint8))


@pytest.fixture(scope="module")
def nsclc_ref(tmp_path_factory) -> Path:
    info = {c["id"]: c for c in json.loads((DATA / "cases.json").read_text())["cases"]}
    out = tmp_path_factory.mktemp("real") / "nsclc_ref"
    with DatasetWriter(out, "nsclc-2", LabelSchema.default()) as w:
        for cid in ("LUNG1-001", "LUNG1-002"):
            img, lab = _middle(read_nifti(DATA / f"{cid}_ct.nii.gz"), read_nifti(DATA / f"{cid}_labels.nii.gz"))
            w.add_case(cid, img, lab, annotated=info[cid]["annotated"], label_role="labelsRef")
    return out


def test_real_labels_partial_annotation_and_hd95(nsclc_ref: Path, tmp_path: Path):
    ds = Dataset(nsclc_ref)
    assert "heart" not in ds.annotated("LUNG1-001")
    pred_dir = tmp_path / "pred"
    # LUNG1-002: heart grown by 2 pixels in-plane (0.977 mm each); everything else exact
    ref2 = ds.load_label("LUNG1-002")
    p2 = ref2.array.copy()
    disk = np.zeros((1, 5, 5), bool)
    disk[0] = (np.mgrid[-2:3, -2:3] ** 2).sum(0) <= 4
    grown = ndi.binary_dilation(p2 == 3, disk) & (p2 == 0)
    p2[grown] = 3
    write_nifti(ref2.with_array(p2), pred_dir / "LUNG1-002.nii.gz")
    # LUNG1-001 has no heart contour: a predicted heart there can be neither right nor wrong
    ref1 = ds.load_label("LUNG1-001")
    p1 = ref1.array.copy()
    fake = np.zeros_like(p1, bool)
    fake[:, 250:300, 240:300] = True
    fake &= p1 == 0
    p1[fake] = 3
    write_nifti(ref1.with_array(p1), pred_dir / "LUNG1-001.nii.gz")

    res = evaluate(pred_dir, nsclc_ref, n_boot=500)
    by = {c["case"]: c for c in res["per_case"]}
    assert "heart" not in by["LUNG1-001"]["metrics"] and "esophagus" not in by["LUNG1-001"]["metrics"]
    assert by["LUNG1-001"]["metrics"]["lung_left"]["dice"] == 1.0
    assert by["LUNG1-001"]["pixel_accuracy"]["all"] == 1.0
    assert by["LUNG1-001"]["pixel_accuracy"]["n_excluded"] == int(fake.sum())
    heart = by["LUNG1-002"]["metrics"]["heart"]
    n_ref = int((ref2.array == 3).sum())
    assert heart["dice"] == pytest.approx(2 * n_ref / (2 * n_ref + int(grown.sum())))
    assert 1.3 < heart["hd95"] <= 2 * 0.9765625 + 1e-6  # the border moved by at most 2 pixels
    assert res["mean"]["heart"]["dice"]["n"] == 1 and res["mean"]["lung_right"]["dice"]["n"] == 2
    assert by["LUNG1-002"]["pixel_accuracy"]["all"] == pytest.approx(1 - grown.sum() / p2.size)
