"""The HTML report of a run folder: one self-contained file (inline CSS, figures as base64 PNG).

Run-folder layout read here (every part optional; the report shows what exists and lists what is
missing; documented in docs/eval.md)::

    RUN/run.json                        {"title", "baseline", "oracle", "arms", "target_ref", "stages", "config"}
    RUN/arms/<arm>/metrics.json         from `styleseg evaluate` (computed on the fly from pred/ if absent)
    RUN/arms/<arm>/pred/<case>.nii.gz   predicted label volumes on the target grid
    RUN/arms/<arm>/**/train_log.jsonl   per-epoch JSON lines: "epoch", "loss", optional "val_dice", ...
    RUN/generators/**/train_log.jsonl   generator training logs (loss curves)
    RUN/figures/*.png                   extra figures (e.g. style grid); caption from a sibling .txt

Contents: metric tables per arm with 95% CIs, per-structure bar charts, the paired difference of each
arm against the baseline (bootstrap CI, Wilcoxon p), the share of the domain gap closed
``(arm - baseline) / (oracle - baseline)`` when an oracle arm exists, overlays like the paper's
Figs. 3-4, training curves, stage timings and the run's config.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from styleseg import __version__
from styleseg.errors import InputError, StylesegError
from styleseg.eval import figures as F
from styleseg.eval import metrics as M
from styleseg.io.atomic import write_text

log = logging.getLogger("styleseg.eval.report")

HIGHER_IS_BETTER = {"dice": True, "iou": True, "hd95": False, "all": True, "foreground": True}
METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (mm)"}


@dataclass
class Arm:
    """What the run folder holds for one arm."""

    name: str
    folder: Path
    metrics: dict[str, Any] | None = None
    metrics_note: str = ""
    pred_dir: Path | None = None
    train_log: list[dict[str, Any]] = field(default_factory=list)
    train_log_path: Path | None = None


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a JSON-lines file and the number of unreadable lines skipped."""
    recs, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(r, dict):
            recs.append(r)
        else:
            bad += 1
    return recs, bad


class RunFolder:
    """Reads a run folder leniently: what is absent or broken is recorded in ``missing``."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)
        if not self.root.is_dir():
            raise InputError(self.root, "run folder does not exist", "pass the folder of a `styleseg run`")
        self.missing: list[str] = []
        self.run: dict[str, Any] = {}
        rj = self.root / "run.json"
        if rj.exists():
            try:
                self.run = json.loads(rj.read_text())
            except json.JSONDecodeError as e:
                self.missing.append(f"run.json is not valid JSON ({e}); title, timings and config not shown")
        else:
            self.missing.append("run.json (title, stage timings, config, reference dataset)")
        self.arms = self._discover_arms()
        if not self.arms:
            self.missing.append("arms/<arm>/ folders: no arm to report")
        self.target_ref = self._target_ref()
        self.baseline = self._pick(self.run.get("baseline"), "baseline")
        self.oracle = self._pick(self.run.get("oracle"), "oracle")

    def _pick(self, configured: Any, default: str) -> str | None:
        names = [a.name for a in self.arms]
        if configured in names:
            return str(configured)
        return default if default in names else None

    def _discover_arms(self) -> list[Arm]:
        adir = self.root / "arms"
        found = sorted(p.name for p in adir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if adir.is_dir() else []
        order = self.run.get("arms")
        if isinstance(order, Mapping):
            order = list(order)
        if isinstance(order, list):
            names = [n for n in order if n in found] + [n for n in found if n not in order]
        else:
            names = sorted(found, key=lambda n: (n != "baseline", n == "oracle", n))
        arms = []
        for n in names:
            a = Arm(n, adir / n)
            p = a.folder / "pred"
            a.pred_dir = p if p.is_dir() and any(p.glob("*.nii*")) else None
            logs = sorted(a.folder.rglob("train_log.jsonl"))
            if logs:
                a.train_log_path = logs[0]
                a.train_log, bad = read_jsonl(logs[0])
                if bad:
                    self.missing.append(f"{logs[0].relative_to(self.root)}: {bad} unreadable line(s) skipped")
            arms.append(a)
        return arms

    def _target_ref(self) -> Path | None:
        cand = self.run.get("target_ref")
        if cand is None:
            for a in self.arms:
                mj = a.folder / "metrics.json"
                if mj.exists():
                    try:
                        cand = json.loads(mj.read_text()).get("config", {}).get("ref")
                    except json.JSONDecodeError:
                        continue
                    if cand:
                        break
        if not cand:
            return None
        p = Path(cand)
        p = p if p.is_absolute() else (self.root / p)
        if not (p / "dataset.json").exists():
            self.missing.append(f"reference dataset {cand} (from run.json target_ref) not found")
            return None
        return p

    def load_metrics(self, n_boot: int = 2000) -> None:
        """Read each arm's metrics.json, or compute it from its predictions and the reference."""
        from styleseg.eval.evaluate import evaluate, load_metrics

        for a in self.arms:
            mj = a.folder / "metrics.json"
            if mj.exists():
                try:
                    a.metrics = load_metrics(mj)
                    a.metrics_note = "metrics.json"
                except StylesegError as e:
                    self.missing.append(f"arms/{a.name}/metrics.json unreadable: {e}")
            if a.metrics is None and a.pred_dir is not None and self.target_ref is not None:
                try:
                    a.metrics = evaluate(a.pred_dir, self.target_ref, n_boot=n_boot)
                    a.metrics_note = "computed from pred/ for this report"
                except StylesegError as e:
                    self.missing.append(f"arms/{a.name}: cannot evaluate predictions: {e}")
            if a.metrics is None:
                self.missing.append(f"arms/{a.name}: no metrics.json (and no pred/ with a known reference)")


# --- HTML helpers ---------------------------------------------------------------------------------------

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


def _structures(arms: Sequence[Arm]) -> list[str]:
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
        out[a.name] = M.compare_cases(a.metrics["per_case"], base.metrics["per_case"], structures, n_boot)
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


# --- figures from volumes -------------------------------------------------------------------------------


def pick_slice(label: np.ndarray, skip_values: Sequence[int] = ()) -> int:
    """The slice with the most distinct structures, ties broken by the largest structure area."""
    lab = np.where(np.isin(label, list(skip_values)), 0, label) if skip_values else label
    best, key = 0, (-1, -1)
    for z in range(lab.shape[0]):
        nz = lab[z][lab[z] > 0]
        k = (int(np.unique(nz).size), int(nz.size))
        if k > key:
            best, key = z, k
    return best


def _crop_box(mask: np.ndarray, margin: int = 8) -> tuple[slice, slice]:
    if not mask.any():
        return slice(None), slice(None)
    ys, xs = np.nonzero(mask)
    return (slice(max(int(ys.min()) - margin, 0), int(ys.max()) + margin + 1),
            slice(max(int(xs.min()) - margin, 0), int(xs.max()) + margin + 1))


def overlay_rows(rf: RunFolder, arms: Sequence[Arm], max_cases: int = 3) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for :func:`figures.overlay_grid`: CT, reference and each arm's prediction on one slice per case."""
    from styleseg.data.slices import window
    from styleseg.eval.evaluate import prediction_path
    from styleseg.io.dataset import Dataset
    from styleseg.io.volume import read_nifti

    assert rf.target_ref is not None
    ds = Dataset(rf.target_ref)
    with_pred = [a for a in arms if a.pred_dir is not None]
    cases = [c.case_id for c in ds.labelled_cases(None)
             if any(prediction_path(a.pred_dir, c.case_id).exists() for a in with_pred)]  # type: ignore[arg-type]
    rows, notes = [], []
    skip = [ds.schema.value("body")] if "body" in ds.schema.names else []
    for cid in cases[:max_cases]:
        img = ds.load_image(cid)
        ref = ds.load_label(cid, img)
        assert ref is not None
        z = pick_slice(ref.array, skip)
        hu = img.array[z].astype(np.float32)
        body = (ref.array[z] > 0) | (hu > -500)
        ys, xs = _crop_box(body)
        labels: dict[str, np.ndarray | None] = {"reference": ref.array[z][ys, xs]}
        for a in arms:
            p = prediction_path(a.pred_dir, cid) if a.pred_dir is not None else None
            if p is None or not p.exists():
                labels[a.name] = None
                continue
            pv = read_nifti(p)
            if pv.shape != img.shape:
                labels[a.name] = None
                notes.append(f"arms/{a.name}/pred/{p.name}: shape {pv.shape} != image {img.shape}")
                continue
            labels[a.name] = pv.array[z][ys, xs]
        rows.append({"title": f"{cid} z={z}", "ct01": window(hu, 40.0, 400.0)[ys, xs],
                     "aspect": img.spacing[1] / img.spacing[0], "labels": labels})
    return rows, notes


# --- the report -----------------------------------------------------------------------------------------


def _stages_table(stages: Any) -> str:
    if not isinstance(stages, Mapping) or not stages:
        return ""
    rows = []
    for name, v in stages.items():
        secs = v.get("seconds") if isinstance(v, Mapping) else v
        extra = {k: w for k, w in v.items() if k != "seconds"} if isinstance(v, Mapping) else {}
        t = f"{float(secs):.1f}" if isinstance(secs, int | float) else "–"
        rows.append(f"<tr><td class=l>{_e(name)}</td><td>{t}</td><td class=l>{_e(json.dumps(extra)) if extra else ''}"
                    "</td></tr>")
    return "<h2>Stage timings</h2>" + _table(["stage", "seconds", "details"], rows, left=1)


def _img(uri: str | None, caption: str) -> str:
    if uri is None:
        return ""
    return f'<figure><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def build_html(rf: RunFolder, n_boot: int = 2000, max_cases: int = 3) -> str:
    """The report's HTML text (see the module docstring for what it contains)."""
    rf.load_metrics(n_boot)
    arms = [a for a in rf.arms if a.metrics is not None]
    structures = _structures(arms)
    title = rf.run.get("title") or f"styleseg run {rf.root.name}"
    parts = [f"<h1>{_e(title)}</h1><p class=sub>run folder {_e(rf.root.resolve())} · styleseg {_e(__version__)} · "
             f"report written {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>"]
    if isinstance(rf.run.get("description"), str):
        parts.append(f"<p>{_e(rf.run['description'])}</p>")
    desc = rf.run.get("arms") if isinstance(rf.run.get("arms"), Mapping) else {}
    if rf.arms:
        rows = []
        for a in rf.arms:
            d = desc.get(a.name, {})
            d = d.get("description", "") if isinstance(d, Mapping) else str(d)
            role = "baseline" if a.name == rf.baseline else ("oracle" if a.name == rf.oracle else "")
            rows.append(f"<tr><td class=l>{_e(a.name)}</td><td class=l>{_e(role)}</td><td class=l>{_e(d)}</td>"
                        f"<td class=l>{_e(a.metrics_note or 'no metrics')}</td>"
                        f"<td>{len((a.metrics or {}).get('cases', []))}</td></tr>")
        parts.append("<h2>Arms</h2>" + _table(["arm", "role", "description", "metrics from", "cases"], rows, left=4))

    if arms:
        parts.append("<h2>Metrics per arm</h2><p class=sub>Mean over target test cases with the 95% percentile-"
                     "bootstrap CI over cases; best arm per column in bold. Unannotated structures are excluded; "
                     "HD95 of a structure missed entirely is capped at the grid diagonal (docs/eval.md).</p>")
        for m in ("dice", "hd95", "iou"):
            parts.append(f"<h3>{METRIC_TITLES[m]}</h3>" + metric_table(arms, structures, m))
        parts.append("<h3>Pixel accuracy (the paper's metric)</h3><p class=sub>Share of voxels whose label is "
                     "right, over all voxels (air included) and over the foreground union (voxels labelled as "
                     "a structure by the reference or the prediction).</p>" + pixel_table(arms))
        names = [a.name for a in arms]
        colours = {a.name: i for i, a in enumerate(rf.arms)}
        for m, ylab in (("dice", "Dice"), ("hd95", "HD95 (mm)")):
            cis = {a.name: {s: (a.metrics or {})["mean"].get(s, {}).get(m) for s in structures} for a in arms}
            parts.append(_img(F.ci_bars(names, structures, cis, ylab, f"{ylab} per structure (95% CI)", colours),
                              f"{ylab} per structure and arm; error bars: 95% bootstrap CI over cases"))

    base = next((a for a in arms if a.name == rf.baseline), None)
    if base is not None and len(arms) > 1:
        diffs = paired_vs_baseline(arms, base, structures, n_boot)
        parts.append(f"<h2>Paired difference against the baseline ({_e(base.name)})</h2><p class=sub>Mean of the "
                     "per-case difference arm − baseline on the same cases, 95% bootstrap CI, two-sided Wilcoxon "
                     "signed-rank p. Bold: CI excludes 0 in the better direction.</p>")
        for m in ("dice", "hd95"):
            parts.append(f"<h3>{METRIC_TITLES[m]}</h3>" + diff_table(diffs, structures, m))
        dice_diffs = {a: {s: v["dice"] for s, v in d["structures"].items() if "dice" in v} for a, d in diffs.items()}
        parts.append(_img(F.diff_bars(list(diffs), structures, dice_diffs, "ΔDice vs baseline",
                                      "Paired Dice difference against the baseline (95% CI)",
                                      {a.name: i for i, a in enumerate(rf.arms)}),
                          "Dice difference of each arm against the baseline, per structure"))
    elif arms:
        rf.missing.append("a baseline arm (arms/baseline or run.json 'baseline'): no paired differences")

    oracle = next((a for a in arms if a.name == rf.oracle), None)
    if base is not None and oracle is not None:
        gap = gap_closed(arms, base, oracle, structures)
        rows = [f"<tr><td class=l>{_e(arm)}</td>" + "".join(
            f"<td>{'–' if v is None else f'{100 * v:.0f}%'}</td>" for v in g.values()) + "</tr>"
            for arm, g in gap.items()]
        parts.append("<h2>Share of the domain gap closed</h2><p class=sub>(arm − baseline) / (oracle − baseline) on "
                     "mean Dice: 0% = no better than the baseline, 100% = as good as the oracle trained on "
                     "annotated target data; – where the oracle is not better than the baseline.</p>"
                     + _table(["arm", *structures], rows))
    elif arms:
        rf.missing.append("an oracle arm (arms/oracle or run.json 'oracle'): share of the gap closed not computed")

    if rf.target_ref is not None and any(a.pred_dir is not None for a in rf.arms):
        try:
            rows_, notes = overlay_rows(rf, [a for a in rf.arms if a.pred_dir is not None], max_cases)
            rf.missing.extend(notes)
            if rows_:
                from styleseg.io.dataset import Dataset

                cols = ["reference", *[a.name for a in rf.arms if a.pred_dir is not None]]
                parts.append("<h2>Segmentations (as the paper's Figs. 3-4)</h2>" + _img(
                    F.overlay_grid(rows_, Dataset(rf.target_ref).schema, cols),
                    "CT (soft-tissue window), reference and each arm's prediction on the slice with the most "
                    "structures of each case"))
        except StylesegError as e:
            rf.missing.append(f"segmentation figure: {e}")
    else:
        rf.missing.append("segmentation figure: needs run.json target_ref and arms/<arm>/pred/")

    logs = {a.name: a.train_log for a in rf.arms if a.train_log}
    if logs:
        numeric = [k for r in logs.values() for rec in r for k, v in rec.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)]
        keys = list(dict.fromkeys(k for k in numeric if "loss" in k))
        keys += sorted({k for k in numeric if "dice" in k}, key=lambda k: (k != "val_dice", k))
        parts.append("<h2>Training curves</h2>" + _img(F.curves(logs, keys[:6], "segmentation training"),
                                                       "per-epoch loss and validation Dice (train_log.jsonl)"))
    else:
        rf.missing.append("training curves: no arms/<arm>/**/train_log.jsonl")
    glogs: dict[str, list[dict[str, Any]]] = {}
    gdir = rf.root / "generators"
    for p in sorted(gdir.rglob("train_log.jsonl")) if gdir.is_dir() else []:
        glogs[str(p.parent.relative_to(gdir))], _ = read_jsonl(p)
    if glogs:
        parts.append("<h2>Generator training</h2>" + _img(F.curves(glogs, None, "style generators"),
                                                          "generator losses per epoch (generators/**/train_log.jsonl)"))
    figs = sorted((rf.root / "figures").glob("*.png")) if (rf.root / "figures").is_dir() else []
    if figs:
        parts.append("<h2>More figures</h2>")
        for p in figs:
            cap = p.with_suffix(".txt")
            parts.append(_img(F.png_file_uri(p.read_bytes()), cap.read_text().strip() if cap.exists() else p.name))
    parts.append(_stages_table(rf.run.get("stages")))
    if rf.missing:
        parts.insert(1, "<div class=missing><b>Not in this run folder</b><ul>"
                     + "".join(f"<li>{_e(m)}</li>" for m in rf.missing) + "</ul></div>")
    if rf.run.get("config") is not None:
        parts.append("<h2>Configuration</h2><details><summary>run.json config</summary><pre>"
                     + _e(json.dumps(rf.run["config"], indent=2, default=str)) + "</pre></details>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def write_report(run_dir: Path, out: Path | None = None, n_boot: int = 2000, max_cases: int = 3) -> Path:
    """Write the self-contained report of ``run_dir`` (default ``RUN_DIR/report.html``); return its path."""
    rf = RunFolder(run_dir)
    text = build_html(rf, n_boot=n_boot, max_cases=max_cases)
    out = Path(out) if out is not None else rf.root / "report.html"
    write_text(out, text)
    log.info("wrote %s (%d kB)", out, len(text) // 1024)
    return out
