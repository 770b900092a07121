"""dataset.json's nnU-Net fields: numTraining and the explicit list of training cases (tests io/dataset.py).

nnU-Net itself checks these in tests/ecosystem/test_nnunet.py; these tests need no nnU-Net."""

from __future__ import annotations

import json

import numpy as np

from styleseg.io.dataset import Dataset, DatasetWriter, subset_dataset
from styleseg.io.volume import Volume
from styleseg.labels import LabelSchema


def _case(value: int) -> tuple[Volume, Volume]:
    lab = np.zeros((2, 6, 7), np.uint8)
    lab[:, 1:5, 1:6] = 6
    lab[:, 2:4, 2:4] = value
    return Volume((lab.astype(np.int16) * 10 - 1000), (0.8, 0.8, 2.0)), Volume(lab, (0.8, 0.8, 2.0))


def _write(out, roles):
    with DatasetWriter(out, "t", LabelSchema.default()) as w:
        for i, role in enumerate(roles):
            img, lab = _case(3)
            w.add_case(f"c{i}", img, lab if role else None, label_role=role or "labelsTr")
    return json.loads((out / "dataset.json").read_text())


def test_all_labelsTr_keeps_the_plain_nnunet_layout(tmp_path):
    js = _write(tmp_path / "a", ["labelsTr", "labelsTr", "labelsTr"])
    assert js["numTraining"] == 3 and "dataset" not in js


def test_mixed_dataset_lists_its_training_cases(tmp_path):
    js = _write(tmp_path / "m", ["labelsTr", "labelsRef", None, "labelsTr"])
    assert js["numTraining"] == 2
    assert js["dataset"] == {"c0": {"images": ["imagesTr/c0_0000.nii.gz"], "label": "labelsTr/c0.nii.gz"},
                             "c3": {"images": ["imagesTr/c3_0000.nii.gz"], "label": "labelsTr/c3.nii.gz"}}
    for entry in js["dataset"].values():  # relative to the dataset folder, and there
        assert (tmp_path / "m" / entry["label"]).is_file() and (tmp_path / "m" / entry["images"][0]).is_file()


def test_unannotated_dataset_has_no_training_cases(tmp_path):
    """Before: numTraining fell back to the number of cases, a count of training cases that have no labels."""
    js = _write(tmp_path / "u", [None, None])
    assert js["numTraining"] == 0 and js["dataset"] == {}


def test_subset_recomputes_the_training_cases(tmp_path):
    src = tmp_path / "m"
    _write(src, ["labelsTr", "labelsRef", None, "labelsTr"])
    js = json.loads((subset_dataset(src, ["c0", "c3"], tmp_path / "s1") / "dataset.json").read_text())
    assert js["numTraining"] == 2 and "dataset" not in js  # the source's list does not leak into the subset
    js = json.loads((subset_dataset(src, ["c1", "c2", "c3"], tmp_path / "s2") / "dataset.json").read_text())
    assert js["numTraining"] == 1 and list(js["dataset"]) == ["c3"]
    js = json.loads((subset_dataset(src, ["c1"], tmp_path / "s3", label_role="labelsTr") / "dataset.json").read_text())
    assert js["numTraining"] == 1 and "dataset" not in js  # the oracle's move of labelsRef into labelsTr
    assert Dataset(tmp_path / "s3").case("c1").labels == "labelsTr"
