"""Statistics over training seeds and test cases: is an arm's difference to the reference real, or seed noise?

One training run of a U-Net is one draw: on small structures two seeds of the same configuration differ by
more than most arms differ from each other (oesophagus 0.57 and 0.34 in two runs, BENCHMARKS.md). So an arm
trained with S seeds and tested on C cases gives an (S, C) table of values per structure and metric, and:

- :func:`seed_case_ci`: the mean over the table with a percentile-bootstrap CI that resamples cases and
  seeds (a two-stage bootstrap; Davison & Hinkley 1997, sec. 3.8): both sources of variation are in the
  interval;
- :func:`paired_seed_case_diff`: the difference of two arms on the same cases, cases resampled jointly
  (paired), each arm's seeds resampled on their own (the seeds of two arms are independent trainings); a
  difference whose CI contains 0 is *unresolved*, never a win.

Missing values (a structure not annotated in a case) are NaN and left out of every mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from styleseg.eval.metrics import STRUCTURE_METRICS


def _grid_means(table: np.ndarray, seeds: np.ndarray, cases: np.ndarray) -> np.ndarray:
    """For each bootstrap draw b, the NaN-mean of table[seeds[b]][:, cases[b]] (over the finite cells); NaN for a
    draw with no finite cell (every drawn case lacks the structure): it has no mean, and is left out of the
    interval rather than counted as 0."""
    sub = table[seeds[:, :, None], cases[:, None, :]]  # (B, S, C)
    ok = np.isfinite(sub)
    n = ok.sum(axis=(1, 2))
    return np.where(n > 0, np.where(ok, sub, 0.0).sum(axis=(1, 2)) / np.maximum(n, 1), np.nan)


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of the bootstrap draws that have a value."""
    a = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(draws, [a, 1.0 - a])
    return float(lo), float(hi)


def _nanmean(table: np.ndarray) -> float:
    ok = np.isfinite(table)
    return float(table[ok].mean()) if ok.any() else float("nan")


def seed_case_ci(table: Sequence[Sequence[float]] | np.ndarray, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, Any]:
    """Mean of an (S seeds, C cases) table with a bootstrap CI over cases and seeds (see the module docstring).
    Each draw resamples C cases and S seeds with replacement and takes the mean of the resampled grid."""
    t = np.asarray(table, float)
    if t.ndim != 2:
        raise ValueError(f"expected a (seeds, cases) table, got shape {t.shape}")
    mean = _nanmean(t)
    out = {"mean": mean, "ci_low": mean, "ci_high": mean, "n_seeds": int(t.shape[0]), "n_cases": int(t.shape[1]),
           "n": int(np.isfinite(t).sum())}
    if not np.isfinite(mean) or t.size == 1:
        return out
    rng = np.random.default_rng(seed)
    s = rng.integers(0, t.shape[0], size=(n_boot, t.shape[0]))
    c = rng.integers(0, t.shape[1], size=(n_boot, t.shape[1]))
    out["ci_low"], out["ci_high"] = _interval(_grid_means(t, s, c), level)
    return out


def paired_seed_case_diff(a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray,
                          n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Difference mean(a) - mean(b) of two arms' (seeds, cases) tables on the same cases (columns), with a
    bootstrap CI: the same resampled cases for both arms (paired), seeds resampled per arm. ``resolved`` is
    whether the CI excludes 0."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (seeds, cases) tables over the same cases, got {x.shape} and {y.shape}")
    # a case counts where both arms have a value for it (in some seed)
    both = np.isfinite(x).any(0) & np.isfinite(y).any(0)
    x, y = x[:, both], y[:, both]
    diff = _nanmean(x) - _nanmean(y) if both.any() else float("nan")
    out = {"mean_diff": diff, "ci_low": diff, "ci_high": diff, "n_cases": int(both.sum()),
           "n_seeds": [int(x.shape[0]), int(y.shape[0])], "resolved": False}
    if not np.isfinite(diff):
        return out
    rng = np.random.default_rng(seed)
    c = rng.integers(0, x.shape[1], size=(n_boot, x.shape[1]))
    sx = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    sy = rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))
    lo, hi = _interval(_grid_means(x, sx, c) - _grid_means(y, sy, c), level)
    out.update(ci_low=lo, ci_high=hi, resolved=bool(lo > 0 or hi < 0))
    return out


def seed_tables(per_seed: Sequence[Mapping[str, Any]], structures: Sequence[str], metric: str = "dice",
                ) -> tuple[list[str], dict[str, np.ndarray]]:
    """(cases, {structure: (S, C) table}) from the metrics.json of each seed of one arm: cases are those every
    seed evaluated; a structure not annotated in a case is NaN."""
    if not per_seed:
        return [], {}
    cases = sorted(set.intersection(*[set(m["cases"]) for m in per_seed]))
    tables: dict[str, np.ndarray] = {}
    for s in structures:
        t = np.full((len(per_seed), len(cases)), np.nan)
        for i, m in enumerate(per_seed):
            by = {c["case"]: c for c in m["per_case"]}
            for j, cid in enumerate(cases):
                v = by[cid]["metrics"].get(s, {}).get(metric)
                t[i, j] = np.nan if v is None else float(v)
        if np.isfinite(t).any():
            tables[s] = t
    return cases, tables


def summarise_seeds(per_seed: Sequence[Mapping[str, Any]], structures: Sequence[str], n_boot: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """{structure: {metric: seed_case_ci}} over the seeds of one arm."""
    out: dict[str, Any] = {}
    for metric in STRUCTURE_METRICS:
        _, tables = seed_tables(per_seed, structures, metric)
        for s, t in tables.items():
            out.setdefault(s, {})[metric] = seed_case_ci(t, n_boot, seed)
    return out


def compare_seeds(per_seed_a: Sequence[Mapping[str, Any]], per_seed_b: Sequence[Mapping[str, Any]],
                  structures: Sequence[str], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """{structure: {metric: paired_seed_case_diff}} of arm a against arm b on the cases both evaluated."""
    out: dict[str, Any] = {}
    for metric in STRUCTURE_METRICS:
        ca, ta = seed_tables(per_seed_a, structures, metric)
        cb, tb = seed_tables(per_seed_b, structures, metric)
        common = [c for c in ca if c in set(cb)]
        ia, ib = [ca.index(c) for c in common], [cb.index(c) for c in common]
        for s in ta:
            if s in tb and common:
                out.setdefault(s, {})[metric] = paired_seed_case_diff(ta[s][:, ia], tb[s][:, ib], n_boot, seed)
    return out


def convergence(train_log: Sequence[Mapping[str, Any]], key: str = "val_mean_organs") -> dict[str, Any]:
    """Did training converge? The best validation score (``val_mean_organs``: mean organ Dice on the validation
    patients, per epoch) reached in the last third of the epochs minus the best before it: ``converged`` when
    that improvement is < 0.01 (the bar of the multi-seed protocol). None when the log has < 3 validated epochs."""
    vals = [float(r[key]) for r in train_log if isinstance(r.get(key), int | float) and np.isfinite(r[key])]
    if len(vals) < 3:
        return {"improvement_last_third": None, "converged": None, "epochs": len(vals)}
    cut = int(np.ceil(2 * len(vals) / 3))
    gain = max(vals[cut:]) - max(vals[:cut])
    return {"improvement_last_third": float(gain), "converged": bool(gain < 0.01), "epochs": len(vals),
            "best_before": float(max(vals[:cut])), "best_last_third": float(max(vals[cut:]))}
