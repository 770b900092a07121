"""Folder-level evaluation: real NIfTI predictions against a tiny reference dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from styleseg.cli import app
from styleseg.errors import InputError
from styleseg.eval import metrics as M
from styleseg.eval.evaluate import evaluate, load_metrics
from styleseg.io.dataset import Dataset


def _ref(ds_path: Path, case: str) -> np.ndarray:
    return Dataset(ds_path).load_label(case).array.copy()


def _strict(text: str):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


def test_perfect_and_degraded_predictions(ref_dataset: Path, tmp_path: Path, write_pred):
    perfect, bad = tmp_path / "perfect", tmp_path / "bad"
    for c in ("c0", "c1", "c2"):
        lab = _ref(ref_dataset, c)
        write_pred(perfect, c, lab)
        worse = lab.copy()
        if c == "c0":
            worse[worse == 3] = 6  # heart missed entirely
        worse[worse == 5] = 6 if c == "c1" else 5  # cord missed in c1
        write_pred(bad, c, worse)
    out = tmp_path / "m" / "metrics.json"
    res = evaluate(perfect, ref_dataset, out=out, compare=bad, n_boot=300)
    data = _strict(out.read_text())
    assert data["cases"] == ["c0", "c1", "c2"] and data["missing"] == []
    for pc in data["per_case"]:
        for s, m in pc["metrics"].items():
            assert m["dice"] == 1.0 and m["hd95"] == 0.0, (pc["case"], s)
        assert pc["pixel_accuracy"]["all"] == 1.0
    c2 = next(pc for pc in data["per_case"] if pc["case"] == "c2")
    assert "heart" not in c2["metrics"] and "heart" in c2["unannotated"]
    assert "esophagus" not in c2["metrics"]  # never annotated anywhere
    assert data["mean"]["heart"]["dice"]["n"] == 2 and data["mean"]["lung_left"]["dice"]["n"] == 3

    other = {pc["case"]: pc for pc in data["comparison"]["other_per_case"]}
    assert other["c0"]["metrics"]["heart"]["dice"] == 0.0 and other["c0"]["metrics"]["heart"]["hd95_capped"]
    assert other["c1"]["metrics"]["spinal_cord"]["dice"] == 0.0
    cmp_heart = data["comparison"]["structures"]["heart"]["dice"]
    assert cmp_heart["n"] == 2 and cmp_heart["mean_diff"] == pytest.approx(0.5)  # (1-0 + 1-1)/2
    # pixel accuracy of the degraded prediction: the missed heart voxels of c0 are wrong
    n_heart = int((_ref(ref_dataset, "c0") == 3).sum())
    assert other["c0"]["pixel_accuracy"]["all"] == pytest.approx(1 - n_heart / _ref(ref_dataset, "c0").size)
    assert res["mean"]["heart"]["dice"]["mean"] == 1.0
    assert load_metrics(out)["per_case"][0]["case"] == "c0"


def test_structure_metrics_match_the_pure_functions(ref_dataset: Path, tmp_path: Path, write_pred):
    lab = _ref(ref_dataset, "c0")
    pred = np.roll(lab, 2, axis=2)  # shifted 2 voxels in x
    write_pred(tmp_path / "p", "c0", pred)
    res = evaluate(tmp_path / "p", ref_dataset, n_boot=100)
    m = res["per_case"][0]["metrics"]["heart"]
    assert m["dice"] == pytest.approx(M.dice(pred == 3, lab == 3))
    assert m["hd95"] == pytest.approx(M.hd95(pred == 3, lab == 3, (0.8, 0.8, 3.0))[0])
    assert 0 < m["dice"] < 1 and m["hd95"] > 0
    assert res["missing"] == ["c1", "c2"]  # listed, not fatal, when no --cases were asked for


def test_missing_and_wrong_grid_predictions_are_clear_errors(ref_dataset: Path, tmp_path: Path, write_pred):
    lab = _ref(ref_dataset, "c0")
    write_pred(tmp_path / "p", "c0", lab)
    with pytest.raises(InputError, match="no prediction for 1 requested case"):
        evaluate(tmp_path / "p", ref_dataset, cases=["c0", "c1"])
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="none of the 3 labelled cases"):
        evaluate(tmp_path / "e", ref_dataset)
    write_pred(tmp_path / "g", "c0", lab, spacing=(1.0, 1.0, 3.0))
    with pytest.raises(InputError, match="not on the reference grid") as ei:
        evaluate(tmp_path / "g", ref_dataset)
    assert "c0.nii.gz" in str(ei.value)
    bad = lab.copy()
    bad[0, 0, 0] = 9
    write_pred(tmp_path / "v", "c0", bad)
    with pytest.raises(InputError, match=r"label values \[9\]"):
        evaluate(tmp_path / "v", ref_dataset)
    assert not (tmp_path / "out.json").exists()


def test_cli_evaluate_prints_table_and_writes_json(ref_dataset: Path, tmp_path: Path, write_pred):
    for c in ("c0", "c1"):
        write_pred(tmp_path / "p", c, _ref(ref_dataset, c))
    out = tmp_path / "metrics.json"
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(ref_dataset),
                                 "--out", str(out), "--compare", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert "lung_left" in r.output and "Dice" in r.output and out.exists()
    data = _strict(out.read_text())
    assert math.isclose(data["comparison"]["structures"]["heart"]["dice"]["mean_diff"], 0.0)
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(ref_dataset)])
    assert r.exit_code == 2 and "does not exist" in r.output
