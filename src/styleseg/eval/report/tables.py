"""HTML building blocks of the report: escaping, cells with CIs, the metric, pixel-accuracy and paired-difference
tables, and the share of the domain gap closed."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from styleseg.eval import metrics
from styleseg.eval.report.run_folder import Arm

HIGHER_IS_BETTER = {"dice": True, "iou": True, "hd95": False, "all": True, "foreground": True}
METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (mm)"}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1300px;color:#222}
h1{font-size:1.6em;margin-bottom:0} h2{border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0 16px 0;font-size:0.86em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right} th{background:#f3f3f3}
td.l,th.l{text-align:left} td.best{font-weight:bold;background:#eef7ee}
.sub{color:#666;font-size:0.9em} .ci{color:#777;font-size:0.85em}
.missing{background:#fff6e0;border:1px solid #f0d080;padding:6px 12px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
figure{margin:10px 0} figcaption{color:#555;font-size:0.85em}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:0.8em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any, digits: int) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{float(v):.{digits}f}"


def _ci_cell(d: Mapping[str, Any] | None, digits: int, best: bool = False) -> str:
    if not d or d.get("mean") is None or (isinstance(d["mean"], float) and not np.isfinite(d["mean"])):
        return "<td>–</td>"
    cls = ' class="best"' if best else ""
    return (f"<td{cls}>{_num(d['mean'], digits)} <span class=ci>[{_num(d.get('ci_low'), digits)}, "
            f"{_num(d.get('ci_high'), digits)}] n={d.get('n', '')}</span></td>")


def _table(header: Sequence[str], rows: Sequence[str], left: int = 1) -> str:
    th = "".join(f"<th{' class=l' if i < left else ''}>{_e(h)}</th>" for i, h in enumerate(header))
    return f"<table><tr>{th}</tr>{''.join(rows)}</table>"


def _best(values: Sequence[float | None], higher: bool) -> set[int]:
    """Rows holding the best value (all ties); empty when every row ties or fewer than two have values."""
    vals = [(i, float(v)) for i, v in enumerate(values) if v is not None and np.isfinite(v)]
    if len(vals) < 2:
        return set()
    b = (max if higher else min)(v for _, v in vals)
    top = {i for i, v in vals if abs(v - b) <= 1e-9}
    return set() if len(top) == len(vals) else top


def structures_of(arms: Sequence[Arm]) -> list[str]:
    out: list[str] = []
    for a in arms:
        for s in (a.metrics or {}).get("mean", {}):
            if s not in out:
                out.append(s)
    return out


def metric_table(arms: Sequence[Arm], structures: Sequence[str], metric: str) -> str:
    """Rows = arms, columns = structures; mean [95% CI]; the best arm per column in bold."""
    digits = 2 if metric == "hd95" else 3
    rows = []
    cols = {s: [((a.metrics or {}).get("mean", {}).get(s, {}).get(metric) or {}).get("mean") for a in arms]
            for s in structures}
    best = {s: _best(cols[s], HIGHER_IS_BETTER[metric]) for s in structures}
    for i, a in enumerate(arms):
        cells = "".join(_ci_cell((a.metrics or {}).get("mean", {}).get(s, {}).get(metric), digits, i in best[s])
                        for s in structures)
        rows.append(f"<tr><td class=l>{_e(a.name)}</td>{cells}</tr>")
    return _table(["arm", *structures], rows)


def pixel_table(arms: Sequence[Arm]) -> str:
    rows = []
    keys = ("all", "foreground")
    cols = {k: [((a.metrics or {}).get("pixel_accuracy", {}).get(k) or {}).get("mean") for a in arms] for k in keys}
    best = {k: _best(cols[k], True) for k in keys}
    for i, a in enumerate(arms):
        pa = (a.metrics or {}).get("pixel_accuracy", {})
        rows.append(f"<tr><td class=l>{_e(a.name)}</td>{_ci_cell(pa.get('all'), 4, i in best['all'])}"
                    f"{_ci_cell(pa.get('foreground'), 4, i in best['foreground'])}"
                    f"<td>{len((a.metrics or {}).get('cases', []))}</td></tr>")
    return _table(["arm", "all voxels", "foreground union", "cases"], rows)


def paired_vs_baseline(arms: Sequence[Arm], base: Arm, structures: Sequence[str], n_boot: int) -> dict[str, Any]:
    """compare_cases(arm, baseline) for each other arm with metrics."""
    out = {}
    for a in arms:
        if a is base or a.metrics is None or base.metrics is None:
            continue
        out[a.name] = metrics.compare_cases(a.metrics["per_case"], base.metrics["per_case"], structures, n_boot)
    return out


def diff_table(diffs: Mapping[str, Any], structures: Sequence[str], metric: str) -> str:
    digits = 2 if metric == "hd95" else 3
    rows = []
    for arm, d in diffs.items():
        cells = []
        for s in structures:
            c = d["structures"].get(s, {}).get(metric)
            if not c or c.get("mean_diff") is None or not np.isfinite(c["mean_diff"]):
                cells.append("<td>–</td>")
                continue
            p = c.get("p_wilcoxon")
            lo, hi = c.get("ci_low"), c.get("ci_high")
            good = (lo is not None and lo > 0) if HIGHER_IS_BETTER[metric] else (hi is not None and hi < 0)
            cells.append(f"<td{' class=best' if good else ''}>{float(c['mean_diff']):+.{digits}f} <span class=ci>"
                         f"[{_num(c['ci_low'], digits)}, {_num(c['ci_high'], digits)}] p={_num(p, 3)} "
                         f"n={c['n']}</span></td>")
        rows.append(f"<tr><td class=l>{_e(arm)}</td>{''.join(cells)}</tr>")
    return _table(["arm − baseline", *structures], rows)


def gap_closed(arms: Sequence[Arm], base: Arm, oracle: Arm, structures: Sequence[str], metric: str = "dice"
               ) -> dict[str, dict[str, float | None]]:
    """Share of the domain gap closed, (arm - baseline) / (oracle - baseline), on the mean of ``metric``.

    None where a value is missing or the oracle is no better than the baseline (|gap| < 1e-6).
    """
    def mean(a: Arm, s: str) -> float | None:
        v = ((a.metrics or {}).get("mean", {}).get(s, {}).get(metric) or {}).get("mean")
        return None if v is None or not np.isfinite(v) else float(v)

    out: dict[str, dict[str, float | None]] = {}
    for a in arms:
        if a is base or a is oracle:
            continue
        out[a.name] = {}
        for s in structures:
            va, vb, vo = mean(a, s), mean(base, s), mean(oracle, s)
            if None in (va, vb, vo) or abs(vo - vb) < 1e-6:  # type: ignore[operator]
                out[a.name][s] = None
            else:
                out[a.name][s] = (va - vb) / (vo - vb)  # type: ignore[operator]
    return out


