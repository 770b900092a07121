"""Metrics on tiny arrays with hand-computed answers (issue 5, must show 2: metrics tests)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from styleseg.eval import metrics as M
from styleseg.labels import LabelSchema


def test_dice_iou_hand_computed():
    pred = np.array([[1, 1, 0], [0, 0, 0]], bool)
    ref = np.array([[1, 0, 0], [1, 0, 0]], bool)
    # |P| = 2, |R| = 2, |P∩R| = 1, |P∪R| = 3
    assert M.dice(pred, ref) == pytest.approx(0.5)
    assert M.iou(pred, ref) == pytest.approx(1 / 3)
    assert M.dice(ref, ref) == 1.0 and M.iou(ref, ref) == 1.0


def test_empty_prediction_and_empty_reference():
    ref = np.zeros((2, 3, 4), bool)
    ref[1, 1, 1] = True
    empty = np.zeros_like(ref)
    sp = (0.5, 2.0, 3.0)  # (x, y, z) mm
    # one empty: Dice 0, IoU 0, HD95 capped at the grid diagonal sqrt((3*0.5)^2 + (2*2)^2 + (1*3)^2)
    diag = math.sqrt(1.5**2 + 4.0**2 + 3.0**2)
    for p, r in ((empty, ref), (ref, empty)):
        m = M.structure_metrics(p, r, sp)
        assert m["dice"] == 0.0 and m["iou"] == 0.0
        assert m["hd95"] == pytest.approx(diag) and m["hd95_capped"] is True
    # both empty: perfect agreement, flagged by n_ref == 0
    m = M.structure_metrics(empty, empty, sp)
    assert (m["dice"], m["iou"], m["hd95"], m["hd95_capped"], m["n_ref"], m["n_pred"]) == (1.0, 1.0, 0.0, False, 0, 0)


def test_hd95_uses_spacing_xyz_on_zyx_arrays():
    a = np.zeros((1, 5, 10), bool)
    b = np.zeros_like(a)
    a[0, 2, 2] = True
    b[0, 2, 6] = True  # 4 voxels apart along x
    assert M.hd95(a, b, (0.5, 2.0, 3.0))[0] == pytest.approx(2.0)  # 4 * 0.5 mm
    c = np.zeros_like(a)
    c[0, 4, 2] = True  # 2 voxels apart along y
    assert M.hd95(a, c, (0.5, 2.0, 3.0))[0] == pytest.approx(4.0)  # 2 * 2 mm
    v1 = np.zeros((4, 3, 3), bool)
    v2 = np.zeros_like(v1)
    v1[0, 1, 1] = True
    v2[3, 1, 1] = True  # 3 slices apart along z
    assert M.hd95(v1, v2, (0.5, 2.0, 3.0))[0] == pytest.approx(9.0)


def test_hd95_is_the_95th_percentile_not_the_max():
    # ref: a one-voxel-thick line of 10 voxels (every voxel is surface); pred: the same line plus
    # one outlier 8 voxels beyond its end. Distances pred -> ref: ten 0s and one 8*0.5 = 4 mm.
    # np.percentile(linear) of 11 values at 95%: position 9.5 -> halfway between 0 and 4 = 2 mm.
    ref = np.zeros((1, 3, 30), bool)
    ref[0, 1, 0:10] = True
    pred = ref.copy()
    pred[0, 1, 17] = True  # nearest ref voxel is x = 9: 8 voxels away
    h, capped = M.hd95(pred, ref, (0.5, 1.0, 1.0))
    assert h == pytest.approx(2.0) and not capped
    assert M.hd95(ref, pred, (0.5, 1.0, 1.0))[0] == pytest.approx(2.0)  # symmetric


def test_hd95_matches_monai_on_random_blobs():
    from monai.metrics import compute_hausdorff_distance
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    sp = (0.8, 0.7, 2.5)
    for _ in range(3):
        a = ndi.gaussian_filter(rng.random((8, 24, 24)), 2) > 0.5
        b = ndi.gaussian_filter(rng.random((8, 24, 24)), 2) > 0.5
        if not a.any() or not b.any():
            continue
        ours = M.hd95(a, b, sp)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = compute_hausdorff_distance(
                b[None, None].astype(np.float32), a[None, None].astype(np.float32), include_background=True,
                percentile=95, spacing=[float(s) for s in sp[::-1]])
        assert ours == pytest.approx(float(np.asarray(ref).ravel()[0]), rel=1e-5)


def test_pixel_accuracy_all_and_foreground_with_unknown_structure_excluded():
    pred = np.array([[0, 1, 1], [3, 0, 0]])
    ref = np.array([[0, 1, 0], [0, 0, 2]])
    pa = M.pixel_accuracy(pred, ref, unknown_values=[3])
    # the voxel predicted as 3 (unannotated) is excluded: 5 voxels, 3 agree
    assert pa["all"] == pytest.approx(3 / 5) and pa["n_all"] == 5 and pa["n_excluded"] == 1
    # foreground union among the kept voxels: (0,1) ok, (0,2) wrong, (1,2) wrong -> 1/3
    assert pa["foreground"] == pytest.approx(1 / 3) and pa["n_foreground"] == 3
    pa0 = M.pixel_accuracy(np.zeros((2, 2)), np.zeros((2, 2)))
    assert pa0["all"] == 1.0 and math.isnan(pa0["foreground"])


def test_case_metrics_skips_unannotated_structures():
    schema = LabelSchema.default()
    ref = np.zeros((1, 6, 6), np.uint8)
    ref[0, 1:3, 1:3] = 1  # lung_left
    pred = ref.copy()
    pred[0, 4, 4] = 3  # heart predicted, but heart is not annotated in this case
    res = M.case_metrics(pred, ref, schema, known={"lung_left", "lung_right"}, spacing=(1, 1, 1))
    assert set(res["metrics"]) == {"lung_left", "lung_right"}  # heart absent, not 0
    assert res["metrics"]["lung_left"]["dice"] == 1.0
    assert res["metrics"]["lung_right"]["dice"] == 1.0  # both empty
    assert "heart" in res["unannotated"]
    assert res["pixel_accuracy"]["all"] == 1.0 and res["pixel_accuracy"]["n_excluded"] == 1


def test_a_found_unannotated_structure_does_not_cost_the_body_its_dice():
    """A case without a heart contour: its heart is "body" in the reference. A prediction that finds the heart
    there is left out of the body's Dice (as of the pixel accuracy) instead of counting as missed body (52/62)."""
    schema = LabelSchema.default()
    body, heart = schema.value("body"), schema.value("heart")
    ref = np.zeros((1, 8, 8), np.uint8)
    ref[0, 1:7, 1:7] = body  # 36 voxels of body, the heart (2 x 2) among them
    found = ref.copy()
    found[0, 3:5, 3:5] = heart
    found[0, 1, 1:7] = 0  # and a real miss: 6 body voxels called background
    res = M.case_metrics(found, ref, schema, known={"body"}, spacing=(1, 1, 1))
    # the 4 heart voxels are left out: 32 reference voxels, 26 predicted, all inside -> 2 * 26 / 58
    assert res["metrics"]["body"]["dice"] == pytest.approx(52 / 58)
    called_body = ref.copy()
    called_body[0, 1, 1:7] = 0
    assert M.case_metrics(called_body, ref, schema, known={"body"}, spacing=(1, 1, 1))["metrics"]["body"][
        "dice"] == pytest.approx(2 * 30 / 66)
    # once the heart is annotated, calling it body is an error of both
    ref2 = found.copy()
    ref2[0, 1, 1:7] = body
    res2 = M.case_metrics(called_body, ref2, schema, known={"body", "heart"}, spacing=(1, 1, 1))
    assert res2["metrics"]["heart"]["dice"] == 0.0 and res2["metrics"]["body"]["dice"] < 1.0


def test_bootstrap_ci_hand_cases():
    assert M.bootstrap_ci([0.7, 0.7, 0.7]) == {"mean": pytest.approx(0.7), "ci_low": pytest.approx(0.7),
                                               "ci_high": pytest.approx(0.7), "n": 3}
    # two values 0 and 1: resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4
    ci = M.bootstrap_ci([0.0, 1.0], n_boot=4000, seed=1)
    assert ci["mean"] == 0.5 and ci["ci_low"] == 0.0 and ci["ci_high"] == 1.0
    # NaN / None are dropped, one value gives a zero-width interval, none gives NaN
    assert M.bootstrap_ci([None, float("nan"), 0.3]) == {"mean": 0.3, "ci_low": 0.3, "ci_high": 0.3, "n": 1}
    assert M.bootstrap_ci([])["n"] == 0 and math.isnan(M.bootstrap_ci([])["mean"])
    # seeded, and the interval brackets the mean
    v = np.random.default_rng(0).random(20)
    a, b = M.bootstrap_ci(v, seed=5), M.bootstrap_ci(v, seed=5)
    assert a == b and a["ci_low"] < a["mean"] < a["ci_high"]
    # width ~ 2 * 1.96 * sd / sqrt(n) for a normal-ish mean
    se = v.std(ddof=1) / math.sqrt(v.size)
    assert (a["ci_high"] - a["ci_low"]) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_paired_comparison_hand_cases():
    b = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.4])
    r = M.paired_comparison(b + 0.1, b)
    assert r["mean_diff"] == pytest.approx(0.1) and r["n"] == 6
    assert r["ci_low"] == pytest.approx(0.1) and r["ci_high"] == pytest.approx(0.1)
    # exact two-sided signed-rank p with all 6 differences positive: 2 / 2^6
    assert r["p_wilcoxon"] == pytest.approx(2 / 64)
    assert M.paired_comparison(b, b)["p_wilcoxon"] == 1.0
    r2 = M.paired_comparison([0.9, None, 0.5], [0.8, 0.7, float("nan")])
    assert r2["n"] == 1 and r2["mean_diff"] == pytest.approx(0.1)


def test_summarise_and_compare_cases_from_per_case_entries():
    def case(cid, d, pa):
        return {"case": cid, "metrics": {"heart": {"dice": d, "iou": d / (2 - d), "hd95": 1.0}},
                "pixel_accuracy": {"all": pa, "foreground": pa}}

    a = [case("a", 0.8, 0.9), case("b", 0.6, 0.8), {"case": "c", "metrics": {}, "pixel_accuracy":
                                                       {"all": 1.0, "foreground": None}}]
    s = M.summarise(a, ["heart", "lung_left"], n_boot=200)
    assert s["mean"]["heart"]["dice"]["mean"] == pytest.approx(0.7) and s["mean"]["heart"]["dice"]["n"] == 2
    assert "lung_left" not in s["mean"]
    assert s["pixel_accuracy"]["foreground"]["n"] == 2
    b = [case("b", 0.5, 0.8), case("a", 0.6, 0.9)]
    c = M.compare_cases(a, b, ["heart"], n_boot=200)
    assert c["n_cases"] == 2
    assert c["structures"]["heart"]["dice"]["mean_diff"] == pytest.approx(((0.8 - 0.6) + (0.6 - 0.5)) / 2)
