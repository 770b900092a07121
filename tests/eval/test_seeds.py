"""Statistics over seeds and cases (eval/seeds.py), with hand-computed answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from styleseg.eval.seeds import compare_seeds, convergence, paired_seed_case_diff, seed_case_ci, summarise_seeds


def _exact_quantiles(table: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the two-stage bootstrap by full enumeration (every resample of seeds and of
    cases, each with its multinomial probability)."""
    s, c = table.shape
    means, weights = [], []
    for si in itertools.product(range(s), repeat=s):
        for ci in itertools.product(range(c), repeat=c):
            means.append(table[np.ix_(si, ci)].mean())
            weights.append(1.0)
    order = np.argsort(means)
    m, w = np.asarray(means)[order], np.cumsum(np.asarray(weights)[order]) / len(weights)
    a = (1 - level) / 2
    return float(m[np.searchsorted(w, a)]), float(m[np.searchsorted(w, 1 - a)])


def test_one_seed_two_cases_by_hand():
    # cases 1 and 3: resamples {1,1} p=1/4 -> 1, {1,3} p=1/2 -> 2, {3,3} p=1/4 -> 3; the 95% interval is [1, 3]
    r = seed_case_ci([[1.0, 3.0]], n_boot=20000, seed=1)
    assert r["mean"] == 2.0 and (r["ci_low"], r["ci_high"]) == (1.0, 3.0)
    assert r["n_seeds"] == 1 and r["n_cases"] == 2


def test_seeds_widen_the_interval_as_enumeration_says():
    t = np.array([[1.0, 3.0], [3.0, 5.0]])  # two seeds that disagree by 2 on every case
    r = seed_case_ci(t, n_boot=40000, seed=0)
    lo, hi = _exact_quantiles(t)
    assert r["mean"] == 3.0 and (lo, hi) == (1.0, 5.0)
    assert r["ci_low"] == pytest.approx(lo) and r["ci_high"] == pytest.approx(hi)
    one_seed = seed_case_ci(t[:1], n_boot=40000, seed=0)
    assert one_seed["ci_high"] - one_seed["ci_low"] < r["ci_high"] - r["ci_low"]


def test_paired_difference_is_resolved_only_when_the_ci_excludes_zero():
    a = np.array([[0.80, 0.70, 0.90], [0.82, 0.69, 0.91]])
    better = paired_seed_case_diff(a, a - 0.05, n_boot=4000)
    assert better["mean_diff"] == pytest.approx(0.05) and better["resolved"]
    # seeds of the two arms are resampled apart, so the seed spread (0.01-0.02) widens the interval around 0.05
    assert 0.02 < better["ci_low"] < 0.05 < better["ci_high"] < 0.08
    # a case-dependent difference of mixed sign: unresolved
    mixed = paired_seed_case_diff(a, a + np.array([0.1, -0.1, 0.02]), n_boot=4000)
    assert not mixed["resolved"] and mixed["ci_low"] < 0 < mixed["ci_high"]
    # by hand: one seed each, cases paired: differences (2, 0) -> resamples means 2, 1, 0 -> CI [0, 2]
    d = paired_seed_case_diff([[3.0, 1.0]], [[1.0, 1.0]], n_boot=20000, seed=3)
    assert d["mean_diff"] == 1.0 and (d["ci_low"], d["ci_high"]) == (0.0, 2.0) and not d["resolved"]


def test_missing_structures_are_left_out_not_zero():
    t = np.array([[0.5, np.nan], [0.7, np.nan]])
    r = seed_case_ci(t, n_boot=500)
    assert r["mean"] == pytest.approx(0.6) and r["n"] == 2
    # by hand: a draw of the second case alone (p = 1/4) has no value, and no mean: it is not a 0 in the interval;
    # the draws with a value average seed values {0.5, 0.7} -> 0.5, 0.6 or 0.7, so the CI is [0.5, 0.7]
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.5, 0.7))
    one = seed_case_ci([[0.8, np.nan]], n_boot=4000, seed=2)
    assert (one["ci_low"], one["ci_high"]) == pytest.approx((0.8, 0.8))
    d = paired_seed_case_diff([[0.9, np.nan]], [[0.8, np.nan]], n_boot=4000)
    assert d["n_cases"] == 1 and (d["ci_low"], d["ci_high"]) == pytest.approx((0.1, 0.1)) and d["resolved"]
    with pytest.raises(ValueError):
        paired_seed_case_diff(np.zeros((2, 3)), np.zeros((2, 2)))


def _metrics(values: dict[str, float | None]) -> dict:
    return {"cases": list(values), "per_case": [{"case": c, "metrics": ({} if v is None else {"heart": {"dice": v}})}
                                               for c, v in values.items()]}


def test_metrics_json_of_each_seed_make_the_tables():
    arm = [_metrics({"c1": 0.8, "c2": 0.6, "c3": None}), _metrics({"c1": 0.9, "c2": 0.5, "c3": None})]
    ref = [_metrics({"c1": 0.7, "c2": 0.5, "c3": 0.4})]
    s = summarise_seeds(arm, ["heart"], n_boot=500)
    assert s["heart"]["dice"]["mean"] == pytest.approx(0.7) and s["heart"]["dice"]["n_seeds"] == 2
    d = compare_seeds(arm, ref, ["heart"], n_boot=500)["heart"]["dice"]
    assert d["n_cases"] == 2 and d["mean_diff"] == pytest.approx(0.7 - 0.6)  # c3 has no value in the arm


def test_convergence_is_the_late_improvement():
    log = [{"epoch": e, "val_mean_organs": v} for e, v in enumerate([0.3, 0.6, 0.7, 0.72, 0.725, 0.723], 1)]
    c = convergence(log)
    assert c["converged"] and c["improvement_last_third"] == pytest.approx(0.725 - 0.72)
    rising = [{"epoch": e, "val_mean_organs": v} for e, v in enumerate([0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 1)]
    assert not convergence(rising)["converged"]
    assert convergence([{"epoch": 1, "val_mean_organs": 0.5}])["converged"] is None
