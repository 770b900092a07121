"""dataset.json is untrusted input: case ids and label folders must never lead outside the dataset.

Every bad value is an InputError naming dataset.json and the offending case, through the API and as a
one-line CLI error (`styleseg info`, `styleseg evaluate`); wrong types are InputErrors, never
TypeError/AttributeError.
"""

from __future__ import annotations

import json

import pytest
from rel_helpers import expect_error, listing, write_ct_nifti, write_dataset

from styleseg.errors import InputError
from styleseg.io.dataset import Dataset, subset_dataset


@pytest.mark.parametrize("cid", ["../../../X", "a/b", "/etc/passwd", "..", ".", "", "a\\b", "x\x00y", ".hidden",
                                 "a b", "x" * 201])
def test_unsafe_case_id_refused(tmp_path, cid):
    root = write_dataset(tmp_path / "ds", {cid: {"labels": None, "annotated": []}})
    with pytest.raises(InputError) as e:
        Dataset(root)
    assert e.value.path == root / "dataset.json"
    assert "case id" in e.value.problem and repr(cid)[:60] in str(e.value)


def test_case_id_traversal_refused_by_info(tmp_path):
    root = write_dataset(tmp_path / "ds", {"../../../X": {"labels": None, "annotated": []}})
    before = listing(tmp_path)
    line = expect_error(["info", str(root)], input="dataset.json case id `../../../X`",
                        contains=[f"{root / 'dataset.json'}:", "'../../../X'", "fix:"],
                        left="nothing written", tmp=tmp_path)
    assert "unsafe case id" in line
    assert listing(tmp_path) == before


def test_segment_inputs_refuse_traversal_case_id(tmp_path):
    """`segment DATASET` names its outputs by case id: a traversal id must stop it before any write."""
    from styleseg.seg.segment import discover_inputs

    root = write_dataset(tmp_path / "ds", {"../../../X": {"labels": None, "annotated": []}})
    with pytest.raises(InputError, match="unsafe case id"):
        discover_inputs([root])


@pytest.mark.parametrize("role", ["../../../../etc", "imagesTr", "/etc", "labelsTr/../../x", "labelsTs"])
def test_unknown_label_folder_refused(tmp_path, role):
    root = write_dataset(tmp_path / "ds", {"a": {"labels": role, "annotated": ["heart"]}}, images=["a"])
    with pytest.raises(InputError) as e:
        Dataset(root)
    assert e.value.path == root / "dataset.json" and "'a'" in e.value.problem
    assert "labelsTr" in str(e.value) and repr(role) in str(e.value)


def test_evaluate_does_not_read_outside_the_dataset(tmp_path):
    root = write_dataset(tmp_path / "ds", {"passwd": {"labels": "../../../../../../etc", "annotated": ["heart"]}},
                         images=["passwd"], file_ending=".nii.gz")
    pred = tmp_path / "pred"
    write_ct_nifti(pred / "passwd.nii.gz")
    expect_error(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(tmp_path / "m.json")],
                 input="dataset.json labels folder `../../../../../../etc`",
                 contains=[f"{root / 'dataset.json'}:", "case 'passwd'", "labelsTr"],
                 left="no metrics.json", tmp=tmp_path)
    assert not (tmp_path / "m.json").exists()


def test_subset_dataset_checks_its_label_role(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": {"labels": None, "annotated": []}}, images=["a"])
    with pytest.raises(InputError, match="label_role"):
        subset_dataset(root, ["a"], tmp_path / "sub", label_role="../../x")
    with pytest.raises(InputError, match="'zz' is not in"):
        subset_dataset(root, ["zz"], tmp_path / "sub")
    assert listing(tmp_path).count("sub") == 0 and not list(tmp_path.glob(".sub*"))


BAD_JSON = [
    ("top level is a list", lambda js: [js], "JSON object"),
    ("labels is a list", lambda js: {**js, "labels": ["background", "heart"]}, "'labels'"),
    ("label value not a number", lambda js: {**js, "labels": {"background": 0, "heart": "three"}}, "'labels'"),
    ("region-based labels", lambda js: {**js, "labels": {"background": 0, "lungs": [1, 2]}}, "'labels'"),
    ("file_ending .mha", lambda js: {**js, "file_ending": ".mha"}, "file_ending"),
    ("file_ending a number", lambda js: {**js, "file_ending": 5}, "file_ending"),
    ("styleseg is a list", lambda js: {**js, "styleseg": []}, "'styleseg'"),
    ("cases is a list", lambda js: {**js, "styleseg": {"cases": ["a"]}}, "'cases'"),
    ("case entry is a string", lambda js: {**js, "styleseg": {"cases": {"a": "labelsTr"}}}, "case 'a'"),
    ("annotated is a string", lambda js: {**js, "styleseg": {"cases": {"a": {"labels": None, "annotated": "heart"}}}},
     "'annotated'"),
    ("annotated holds a number",
     lambda js: {**js, "styleseg": {"cases": {"a": {"labels": None, "annotated": [3]}}}}, "'annotated'"),
    ("annotated names an unknown structure",
     lambda js: {**js, "styleseg": {"cases": {"a": {"labels": "labelsTr", "annotated": ["liver"]}}}}, "'liver'"),
    ("derived is a number", lambda js: {**js, "styleseg": {"cases": {"a": {"labels": None, "derived": 1}}}},
     "'derived'"),
    ("labels folder is a number", lambda js: {**js, "styleseg": {"cases": {"a": {"labels": 5}}}}, "case 'a'"),
    ("meta is a string", lambda js: {**js, "styleseg": {"meta": "x", "cases": {}}}, "'meta'"),
    ("missing labels key", lambda js: {k: v for k, v in js.items() if k != "labels"}, "'labels'"),
]


@pytest.mark.parametrize("what,mutate,needle", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_wrong_types_are_input_errors(tmp_path, what, mutate, needle):
    root = write_dataset(tmp_path / "ds", {"a": {"labels": None, "annotated": []}}, images=["a"])
    js = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(mutate(js)))
    with pytest.raises(InputError) as e:
        Dataset(root)
    assert e.value.path == root / "dataset.json" and needle in str(e.value)
    expect_error(["info", str(root)], input=f"dataset.json: {what}", contains=["dataset.json:", needle],
                 left="nothing written", tmp=tmp_path)


def test_plain_nnunet_discovery_validates_file_names(tmp_path):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "heart": 1},
                                                   "file_ending": ".nii.gz"}))
    write_ct_nifti(root / "imagesTr" / "ok_0000.nii.gz")
    assert [c.case_id for c in Dataset(root)] == ["ok"]
    write_ct_nifti(root / "imagesTr" / "bad name_0000.nii.gz")
    with pytest.raises(InputError, match="unsafe case id 'bad name'"):
        Dataset(root)


def test_missing_image_listed_in_dataset_json(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": {"labels": None, "annotated": []}, "b": {"labels": None}},
                         images=["a"])
    ds = Dataset(root)
    assert ds.load_image("a").shape == (3, 64, 64)
    with pytest.raises(InputError, match="case 'b' is listed in dataset.json but its image is missing") as e:
        ds.load_image("b")
    assert e.value.path == root / "imagesTr" / "b_0000.nii.gz"
    expect_error(["info", str(root)], input="image listed in dataset.json missing",
                 contains=[str(root / "imagesTr" / "b_0000.nii.gz"), "missing", "fix:"],
                 left="nothing written", tmp=tmp_path)


def test_missing_label_listed_in_dataset_json(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": {"labels": "labelsTr", "annotated": ["heart"]}}, images=["a"])
    with pytest.raises(InputError, match="case 'a' is listed in dataset.json with labels in labelsTr, but its "
                                         "label file is missing"):
        Dataset(root).load_label("a")
