"""Same-scan agreement (eval/agreement.py): per pair, where a structure was found in neither scan, and over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from styleseg.eval.agreement import pair_agreement, summarise_agreement
from styleseg.io.volume import Volume, write_nifti
from styleseg.labels import LabelSchema

SCHEMA = LabelSchema((("heart", 1), ("cord", 2)))


def test_a_structure_found_in_neither_scan_agrees_and_is_marked_absent(tmp_path: Path) -> None:
    a = np.zeros((1, 8, 8), np.int16)
    b = a + 100  # "another reconstruction": the predictor below thresholds, so the two labellings differ
    write_nifti(Volume(a), tmp_path / "a.nii.gz")
    write_nifti(Volume(b), tmp_path / "b.nii.gz")

    def predict(vol: Volume) -> np.ndarray:
        lab = np.zeros(vol.shape, np.uint8)
        lab[0, :4, :4] = 1  # heart: 16 px on both scans
        if vol.array.mean() > 50:
            lab[0, 4:, :4] = 1  # 16 more on the second: Dice 2 * 16 / (16 + 32) = 2/3
        return lab

    r = pair_agreement(predict, [(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")], SCHEMA)
    assert r["mean"]["heart"] == pytest.approx(2 / 3)
    assert r["mean"]["cord"] == 1.0 and r["absent"] == [{"heart": False, "cord": True}]


def _run(heart: list[float], cord_absent: list[bool]) -> dict:
    return {"per_pair": [{"heart": h, "cord": 1.0} for h in heart],
            "absent": [{"heart": False, "cord": c} for c in cord_absent]}


def test_summary_over_seeds_by_hand() -> None:
    per_seed = {
        "reference": {"0": _run([0.8], [False]), "1": _run([0.6], [False])},
        "styleseg_ref": {"0": _run([0.9], [True]), "1": _run([0.9], [True])},
    }
    s = summarise_agreement(per_seed, "reference", n_boot=20000, seed=0)
    ref, arm = s["arms"]["reference"], s["arms"]["styleseg_ref"]
    assert s["reference"] == "reference" and "vs_reference" not in ref
    # two seeds, one pair: resampled reference means 0.6 (p 1/4), 0.7 (1/2), 0.8 (1/4) -> CI [0.6, 0.8]
    assert ref["mean"]["heart"]["mean"] == pytest.approx(0.7)
    assert (ref["mean"]["heart"]["ci_low"], ref["mean"]["heart"]["ci_high"]) == pytest.approx((0.6, 0.8))
    d = arm["vs_reference"]["heart"]
    # 0.9 - {0.6, 0.7, 0.8} -> +0.2 [+0.1, +0.3], resolved
    assert d["mean_diff"] == pytest.approx(0.2) and (d["ci_low"], d["ci_high"]) == pytest.approx((0.1, 0.3))
    assert d["resolved"] and d["n_seeds"] == [2, 2]
    # the cord "agrees" (1.0) for both, but styleseg found it in neither scan, in both seeds: no difference
    cord = arm["vs_reference"]["cord"]
    assert np.isnan(cord["mean_diff"]) and not cord["resolved"] and cord["n_cases"] == 0
    assert arm["absent"] == {"heart": 0, "cord": 2} and ref["absent"] == {"heart": 0, "cord": 0}


def test_cells_found_in_neither_scan_are_left_out_of_the_difference() -> None:
    """Two pairs; the arm found the cord in neither scan of pair 0 in one seed of two. The difference is taken
    over the cells where it was found: pair 0 from seed 1 alone, pair 1 from both."""
    def run(cord: list[float], absent: list[bool]) -> dict:
        return {"per_pair": [{"heart": 0.5, "cord": c} for c in cord],
                "absent": [{"heart": False, "cord": a} for a in absent]}
    per_seed = {"reference": {"0": run([0.8, 0.6], [False, False]), "1": run([0.8, 0.6], [False, False])},
                "arm": {"0": run([1.0, 0.7], [True, False]), "1": run([0.9, 0.7], [False, False])}}
    d = summarise_agreement(per_seed, "reference", n_boot=200, seed=0)["arms"]["arm"]["vs_reference"]["cord"]
    # arm cells used: 0.9 (pair 0, seed 1), 0.7, 0.7 -> mean 0.7667; reference 0.7 -> +0.0667
    assert d["mean_diff"] == pytest.approx(0.9 / 3 + 1.4 / 3 - 0.7) and d["n_cases"] == 2


def test_summary_without_the_reference_arm_has_no_differences() -> None:
    s = summarise_agreement({"baseline": {"0": _run([0.5, 0.7], [False, False])}}, "reference", n_boot=100)
    assert s["reference"] is None and "vs_reference" not in s["arms"]["baseline"]
    assert s["arms"]["baseline"]["mean"]["heart"]["mean"] == pytest.approx(0.6)
    assert s["arms"]["baseline"]["mean"]["heart"]["n_cases"] == 2


def test_the_run_command_prints_the_agreement_over_seeds_and_old_run_folders(tmp_path: Path) -> None:
    import json

    from rich.console import Console

    from styleseg.cli.pipeline import _print_agreement

    per_seed = {"reference": {"0": _run([0.8], [False]), "1": _run([0.6], [False])},
                "styleseg_ref": {"0": _run([0.9], [True]), "1": _run([0.9], [True])}}
    (tmp_path / "agreement.json").write_text(json.dumps({
        "arms": {}, "seeds": {"reference": {"0": {}, "1": {}}},
        "summary": summarise_agreement(per_seed, "reference", n_boot=2000)}))
    con = Console(record=True, width=200)
    _print_agreement(con, tmp_path)
    out = con.export_text()
    assert "mean over 2 seeds" in out and "0.700 [0.60, 0.80]" in out and "1.000 [1.00, 1.00]*" in out
    (tmp_path / "agreement.json").write_text(json.dumps({"arms": {"baseline": {"heart": 0.25}}}))
    con = Console(record=True, width=200)
    _print_agreement(con, tmp_path)
    assert "0.250" in con.export_text() and "seeds" not in con.export_text()


def test_a_difference_without_cells_shows_as_found_in_neither() -> None:
    from styleseg.eval.report.html import _diff_cell

    assert "found in neither" in _diff_cell({"mean_diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                                      "resolved": False})
    assert "+0.100" in _diff_cell({"mean_diff": 0.1, "ci_low": 0.05, "ci_high": 0.15, "resolved": True})
