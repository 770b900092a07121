"""`styleseg import` and `styleseg info` through Typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from styleseg.cli import app


def test_import_then_info(tiny_ct, tmp_path):
    root, _, _ = tiny_ct
    m = tmp_path / "MAP.toml"
    m.write_text('[structures]\n"GTV-1" = "heart"\n')
    r = CliRunner().invoke(app, ["import", str(root), "--out", str(tmp_path / "ds"), "--structures", str(m)])
    assert r.exit_code == 0, r.output
    assert "P1" in r.output and "heart" in r.output
    r = CliRunner().invoke(app, ["info", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert "B30f" in r.output and "ACME" in r.output and "4x12x10" in r.output and "body*" in r.output


def test_import_bad_input_exit_2_and_names_file(tmp_path):
    r = CliRunner().invoke(app, ["import", str(tmp_path / "missing"), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "missing" in r.output and "does not exist" in r.output
    assert not (tmp_path / "ds").exists()


def test_import_help_has_example():
    r = CliRunner().invoke(app, ["import", "--help"])
    assert r.exit_code == 0 and "Example" in r.output


LONG_ID = "LUNG1-001_B31f_lowdose_recon_2mm"  # 32 characters: rich's 80-column guess cut it to "LUNG1-00…"


def _long_id_dataset(tmp_path):
    """A dataset with a long case id, DICOM scanner tags and both label roles (plus an unannotated case)."""
    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import Volume
    from styleseg.labels import LabelSchema

    lab = np.zeros((3, 8, 9), np.uint8)
    lab[:, 2:6, 2:7] = 6
    lab[:, 3:5, 3:5] = 3
    img = Volume(lab.astype(np.int16) * 10 - 1000, (0.7, 0.7, 2.5))
    out = tmp_path / "ds"
    with DatasetWriter(out, "long ids", LabelSchema.default()) as w:
        w.add_case(LONG_ID, img, img.with_array(lab), annotated=["heart", "body"], derived=["body"],
                   scanner={"Manufacturer": "SIEMENS", "ManufacturerModelName": "Sensation Open",
                            "ConvolutionKernel": "B31s"})
        w.add_case(LONG_ID + "_target", img, img.with_array(lab), annotated=["heart"], label_role="labelsRef")
        w.add_case("plain", img)
    return out


def test_info_to_a_pipe_keeps_whole_case_ids(tmp_path):
    out = _long_id_dataset(tmp_path)
    r = CliRunner().invoke(app, ["info", str(out)])  # CliRunner's stdout is not a terminal, like a pipe
    assert r.exit_code == 0, r.output
    assert "…" not in r.output
    row = next(line for line in r.output.splitlines() if f" {LONG_ID} " in line)  # whole, on one line
    for cell in ("3x8x9", "0.7x0.7x2.5", "SIEMENS Sensation Open", "B31s", "labelsTr", "heart, body*"):
        assert cell in row, (cell, row)
    ref_row = next(line for line in r.output.splitlines() if f" {LONG_ID}_target " in line)
    assert "labelsRef" in ref_row


def test_info_json(tmp_path):
    out = _long_id_dataset(tmp_path)
    r = CliRunner().invoke(app, ["info", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["name"] == "long ids" and info["n_cases"] == 3 and info["labels"]["heart"] == 3
    by_id = {c["id"]: c for c in info["cases"]}
    assert list(by_id) == [LONG_ID, LONG_ID + "_target", "plain"]
    assert by_id[LONG_ID] == {
        "id": LONG_ID, "shape_zyx": [3, 8, 9], "spacing_xyz_mm": [0.7, 0.7, 2.5],
        "scanner": {"Manufacturer": "SIEMENS", "ManufacturerModelName": "Sensation Open", "ConvolutionKernel": "B31s"},
        "kernel": "B31s", "labels": "labelsTr", "annotated": ["heart", "body"], "derived": ["body"]}
    assert by_id[LONG_ID + "_target"]["labels"] == "labelsRef" and by_id[LONG_ID + "_target"]["kernel"] is None
    assert by_id["plain"]["labels"] is None and by_id["plain"]["annotated"] == [] and by_id["plain"]["scanner"] == {}


def test_import_table_to_a_pipe_keeps_whole_case_ids(tmp_path):
    from styleseg.io.volume import Volume, write_nifti

    lab = np.zeros((2, 8, 9), np.uint8)
    lab[:, 2:6, 2:7] = 3
    src = tmp_path / "src"
    write_nifti(Volume(lab.astype(np.int16) * 10 - 1000, (0.7, 0.7, 2.5)), src / f"{LONG_ID}_ct.nii.gz")
    write_nifti(Volume(lab, (0.7, 0.7, 2.5)), src / f"{LONG_ID}_labels.nii.gz")
    r = CliRunner().invoke(app, ["import", str(src), "--out", str(tmp_path / "ds"), "--no-body"])
    assert r.exit_code == 0, r.output
    assert "…" not in r.output
    row = next(line for line in r.output.splitlines() if f" {LONG_ID} " in line)
    assert "nifti" in row and "2x8x9" in row and "heart" in row
