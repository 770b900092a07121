"""The HTML report of a run folder: one self-contained file (inline CSS, figures as base64 PNG).

Run-folder layout read here (every part optional; the report shows what exists and lists what is
missing; documented in docs/eval.md)::

    RUN/run.json                        the run-folder contract (run_info.RunInfo)
    RUN/arms/<arm>/metrics.json         from `styleseg evaluate` (computed on the fly from pred/ if absent)
    RUN/arms/<arm>/pred/<case>.nii.gz   predicted label volumes on the target grid
    RUN/arms/<arm>/**/train_log.jsonl   per-epoch JSON lines: "epoch", "loss", optional "val_dice", ...
    RUN/generators/**/train_log.jsonl   generator training logs (loss curves)
    RUN/figures/*.png                   extra figures (e.g. style grid); caption from a sibling .txt
    RUN/seeds.json                      means over training seeds and paired differences to the reference arm
    RUN/agreement.json                  each arm's agreement between the two scans of same-scan pairs

Contents: metric tables per arm with 95% CIs, per-structure bar charts, the paired difference of each
arm against the baseline (bootstrap CI, Wilcoxon p), the share of the domain gap closed
``(arm - baseline) / (oracle - baseline)`` when an oracle arm exists, overlays like the paper's
Figs. 3-4, training curves, stage timings and the run's config; over seeds, means with CIs, paired
differences to the reference arm and convergence; the label-free agreement on same-scan pairs.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from styleseg import __version__
from styleseg.errors import StylesegError
from styleseg.eval import figures
from styleseg.eval.report.job_section import job_sections
from styleseg.eval.report.run_folder import Arm, RunFolder, read_jsonl
from styleseg.eval.report.tables import (
    CSS,
    METRIC_TITLES,
    _ci_cell,
    _e,
    _num,
    _table,
    diff_table,
    gap_closed,
    metric_table,
    paired_vs_baseline,
    pixel_table,
    structures_of,
)
from styleseg.io.atomic import write_text

log = logging.getLogger("styleseg.eval.report")

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


def _header(rf: RunFolder) -> list[str]:
    title = rf.info.title or f"styleseg run {rf.root.name}"
    parts = [f"<h1>{_e(title)}</h1><p class=sub>run folder {_e(rf.root.resolve())} · styleseg {_e(__version__)} · "
             f"report written {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>"]
    if rf.info.description:
        parts.append(f"<p>{_e(rf.info.description)}</p>")
    return parts


def _arms_section(rf: RunFolder) -> str:
    rows = []
    for a in rf.arms:
        role = "baseline" if a.name == rf.baseline else ("oracle" if a.name == rf.oracle else "")
        info = rf.info.arm(a.name)
        role = role or (info.role if info is not None else "")
        rows.append(f"<tr><td class=l>{_e(a.name)}</td><td class=l>{_e(role)}</td><td class=l>{_e(rf.title(a.name))}"
                    f"</td><td class=l>{_e(a.metrics_note or 'no metrics')}</td>"
                    f"<td>{len((a.metrics or {}).get('cases', []))}</td></tr>")
    return "<h2>Arms</h2>" + _table(["arm", "role", "description", "metrics from", "cases"], rows, left=4)


def _metrics_section(rf: RunFolder, arms: Sequence[Arm], structures: Sequence[str]) -> list[str]:
    parts = ["<h2>Metrics per arm</h2><p class=sub>Mean over target test cases with the 95% percentile-"
             "bootstrap CI over cases; best arm per column in bold. Unannotated structures are excluded; "
             "HD95 of a structure missed entirely is capped at the grid diagonal (docs/eval.md).</p>"]
    for m in ("dice", "hd95", "iou"):
        parts.append(f"<h3>{METRIC_TITLES[m]}</h3>" + metric_table(arms, structures, m))
    parts.append("<h3>Pixel accuracy (the paper's metric)</h3><p class=sub>Share of voxels whose label is "
                 "right, over all voxels (air included) and over the foreground union (voxels labelled as "
                 "a structure by the reference or the prediction).</p>" + pixel_table(arms))
    names = [a.name for a in arms]
    colours = {a.name: i for i, a in enumerate(rf.arms)}
    for m, ylab in (("dice", "Dice"), ("hd95", "HD95 (mm)")):
        cis = {a.name: {s: (a.metrics or {})["mean"].get(s, {}).get(m) for s in structures} for a in arms}
        parts.append(_img(figures.ci_bars(names, structures, cis, ylab, f"{ylab} per structure (95% CI)", colours),
                          f"{ylab} per structure and arm; error bars: 95% bootstrap CI over cases"))
    return parts


def _paired_section(rf: RunFolder, arms: Sequence[Arm], base: Arm, structures: Sequence[str], n_boot: int) -> list[str]:
    diffs = paired_vs_baseline(arms, base, structures, n_boot)
    parts = [f"<h2>Paired difference against the baseline ({_e(base.name)})</h2><p class=sub>Mean of the "
             "per-case difference arm − baseline on the same cases, 95% bootstrap CI, two-sided Wilcoxon "
             "signed-rank p. Bold: CI excludes 0 in the better direction.</p>"]
    for m in ("dice", "hd95"):
        parts.append(f"<h3>{METRIC_TITLES[m]}</h3>" + diff_table(diffs, structures, m))
    dice_diffs = {a: {s: v["dice"] for s, v in d["structures"].items() if "dice" in v} for a, d in diffs.items()}
    parts.append(_img(figures.diff_bars(list(diffs), structures, dice_diffs, "ΔDice vs baseline",
                                        "Paired Dice difference against the baseline (95% CI)",
                                        {a.name: i for i, a in enumerate(rf.arms)}),
                      "Dice difference of each arm against the baseline, per structure"))
    return parts


def _gap_section(arms: Sequence[Arm], base: Arm, oracle: Arm, structures: Sequence[str]) -> str:
    gap = gap_closed(arms, base, oracle, structures)
    rows = [f"<tr><td class=l>{_e(arm)}</td>" + "".join(
        f"<td>{'–' if v is None else f'{100 * v:.0f}%'}</td>" for v in g.values()) + "</tr>"
        for arm, g in gap.items()]
    return ("<h2>Share of the domain gap closed</h2><p class=sub>(arm − baseline) / (oracle − baseline) on "
            "mean Dice: 0% = no better than the baseline, 100% = as good as the oracle trained on "
            "annotated target data; – where the oracle is not better than the baseline.</p>"
            + _table(["arm", *structures], rows))


def _overlay_section(rf: RunFolder, max_cases: int) -> str:
    if rf.target_ref is None or not any(a.pred_dir is not None for a in rf.arms):
        rf.missing.append("segmentation figure: needs run.json target_ref and arms/<arm>/pred/")
        return ""
    try:
        with_pred = [a for a in rf.arms if a.pred_dir is not None]
        rows_, notes = overlay_rows(rf, with_pred, max_cases)
        rf.missing.extend(notes)
        if not rows_:
            return ""
        from styleseg.io.dataset import Dataset

        cols = ["reference", *[a.name for a in with_pred]]
        return "<h2>Segmentations (as the paper's Figs. 3-4)</h2>" + _img(
            figures.overlay_grid(rows_, Dataset(rf.target_ref).schema, cols),
            "CT (soft-tissue window), reference and each arm's prediction on the slice with the most "
            "structures of each case")
    except StylesegError as e:
        rf.missing.append(f"segmentation figure: {e}")
        return ""


def _curves_section(rf: RunFolder) -> list[str]:
    parts = []
    logs = {a.name: a.train_log for a in rf.arms if a.train_log}
    if logs:
        numeric = [k for r in logs.values() for rec in r for k, v in rec.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)]
        keys = list(dict.fromkeys(k for k in numeric if "loss" in k))
        keys += sorted({k for k in numeric if "dice" in k}, key=lambda k: (k != "val_dice", k))
        parts.append("<h2>Training curves</h2>" + _img(figures.curves(logs, keys[:6], "segmentation training"),
                                                       "per-epoch loss and validation Dice (train_log.jsonl)"))
    else:
        rf.missing.append("training curves: no arms/<arm>/**/train_log.jsonl")
    glogs: dict[str, list[dict[str, Any]]] = {}
    gdir = rf.root / "generators"
    for p in sorted(gdir.rglob("train_log.jsonl")) if gdir.is_dir() else []:
        glogs[str(p.parent.relative_to(gdir))], _ = read_jsonl(p)
    if glogs:
        parts.append("<h2>Generator training</h2>" + _img(figures.curves(glogs, None, "style generators"),
                                                          "generator losses per epoch (generators/**/train_log.jsonl)"))
    return parts


def _figures_section(rf: RunFolder) -> list[str]:
    figs = sorted((rf.root / "figures").glob("*.png")) if (rf.root / "figures").is_dir() else []
    parts = ["<h2>More figures</h2>"] if figs else []
    for p in figs:
        cap = p.with_suffix(".txt")
        parts.append(_img(figures.png_file_uri(p.read_bytes()), cap.read_text().strip() if cap.exists() else p.name))
    return parts


def _read_json(rf: RunFolder, name: str) -> Any:
    """RUN/name parsed, or None when absent (or invalid, which the report's "not in this run folder" box lists)."""
    path = rf.root / name
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        rf.missing.append(f"{name} is not valid JSON ({e})")
        return None


def _seeds_section(rf: RunFolder) -> str:
    """Means over seeds x cases with 95% CIs, each arm's paired difference to the reference arm (bold when the CI
    excludes 0, 'unresolved' otherwise) and whether its training converged (from RUN/seeds.json)."""
    data = _read_json(rf, "seeds.json")
    if data is None:
        return ""
    arms, ref = data.get("arms", {}), data.get("reference")
    structures = list(dict.fromkeys(s for a in arms.values() for s in a.get("mean", {})))
    rows = [f"<tr><td class=l>{_e(name)}</td>" + "".join(_ci_cell(a["mean"].get(s, {}).get("dice"), 3) for s in
                                                         structures) + f"<td>{a.get('seeds', '')}</td></tr>"
            for name, a in arms.items()]
    parts = [f"<h2>Over {len(data.get('seeds', []))} training seeds</h2><p class=sub>Mean Dice over seeds x test "
             "cases, 95% bootstrap CI resampling cases and seeds (docs/eval.md).</p>"
             + _table(["arm", *structures, "seeds"], rows)]
    drows = []
    for name, a in arms.items():
        if "vs_reference" not in a:
            continue
        cells = []
        for s in structures:
            cells.append(_diff_cell(a["vs_reference"].get(s, {}).get("dice")))
        drows.append(f"<tr><td class=l>{_e(name)}</td>{''.join(cells)}</tr>")
    if drows:
        parts.append(f"<h3>Paired difference to the reference arm ({_e(ref)})</h3><p class=sub>Same test cases, seeds "
                     "of each arm resampled on their own. A difference whose CI contains 0 is unresolved, not a "
                     "win; bold: resolved and better.</p>" + _table([f"arm − {ref}", *structures], drows))
    crows = []
    for name, a in arms.items():
        conv = a.get("convergence", [])
        gains = [c.get("improvement_last_third") for c in conv if c.get("improvement_last_third") is not None]
        ok = all(c.get("converged") for c in conv) if conv and gains else None
        crows.append(f"<tr><td class=l>{_e(name)}</td><td>{' '.join(f'{g:+.3f}' for g in gains) or '–'}</td>"
                     f"<td>{'–' if ok is None else ('yes' if ok else 'no')}</td></tr>")
    parts.append("<h3>Convergence</h3><p class=sub>Per seed, the best validation Dice (mean over organs) of the last "
                 "third of the epochs minus the best before it; converged when < 0.01 for every seed.</p>"
                 + _table(["arm", "late improvement per seed", "converged"], crows))
    return "".join(parts)


def _diff_cell(d: Mapping[str, Any] | None) -> str:
    """A paired difference with its CI: bold when resolved and better, marked unresolved when its CI contains 0."""
    if not d or d.get("mean_diff") is None:
        return "<td>–</td>"
    if not np.isfinite(d["mean_diff"]):  # no cell where both arms have a value (e.g. found in neither scan)
        return "<td>– <i>found in neither</i></td>"
    txt = f"{d['mean_diff']:+.3f} <span class=ci>[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]</span>"
    return (f"<td class=best>{txt}</td>" if d.get("resolved") and d["mean_diff"] > 0 else
            f"<td>{txt}</td>" if d.get("resolved") else f"<td>{txt} <i>unresolved</i></td>")


def _agreement_section(rf: RunFolder) -> str:
    """Label-free texture robustness (RUN/agreement.json): per arm the Dice between its predictions on the two scans
    of each same-scan pair, over seeds x pairs with CIs, and the paired difference to the reference arm."""
    data = _read_json(rf, "agreement.json")
    if data is None:
        return ""
    pairs = ", ".join(" / ".join(Path(str(x)).name for x in p) for p in data.get("pairs", []))
    summary = data.get("summary")
    head = (f"<h2>Agreement on same-scan pairs</h2><p class=sub>Dice between an arm's predictions on the two "
            f"reconstructions of one scan ({_e(pairs)}): no labels needed; 1 = the same segmentation on both "
            "textures. A structure found in neither scan counts as 1; the cells say how often that happened.</p>")
    if not summary:  # a run folder of an earlier version: the first seed's means only
        arms = data.get("arms", {})
        structures = list(dict.fromkeys(s for d in arms.values() for s in d))
        rows = [f"<tr><td class=l>{_e(a)}</td>" + "".join(f"<td>{_num(d.get(s), 3)}</td>" for s in structures)
                + "</tr>" for a, d in arms.items()]
        return head + _table(["arm", *structures], rows) if rows else ""
    arms, ref = summary.get("arms", {}), summary.get("reference")
    structures = list(dict.fromkeys(s for a in arms.values() for s in a.get("mean", {})))
    rows = []
    for name, a in arms.items():
        cells = []
        for s in structures:
            c = _ci_cell(a["mean"].get(s), 3)
            k = a.get("absent", {}).get(s, 0)
            cells.append(c.replace("</td>", f" <i>found in neither: {k}</i></td>") if k else c)
        rows.append(f"<tr><td class=l>{_e(name)}</td>{''.join(cells)}</tr>")
    parts = [head + _table(["arm", *structures], rows)]
    drows = [f"<tr><td class=l>{_e(name)}</td>" + "".join(_diff_cell(a["vs_reference"].get(s)) for s in structures)
             + "</tr>" for name, a in arms.items() if a.get("vs_reference")]
    if drows and ref:
        parts.append(f"<h3>Agreement: paired difference to the reference arm ({_e(ref)})</h3><p class=sub>Same "
                     "pairs, seeds of each arm resampled on their own; bold: resolved and more self-consistent.</p>"
                     + _table([f"arm − {ref}", *structures], drows))
    return "".join(parts)


def build_html(rf: RunFolder, n_boot: int = 2000, max_cases: int = 3) -> str:
    """The report's HTML text (see the module docstring for what it contains)."""
    rf.load_metrics(n_boot)
    arms = [a for a in rf.arms if a.metrics is not None]
    structures = structures_of(arms)
    parts = _header(rf)
    parts += job_sections(rf.root)  # the job path: model choice, style labels, QC (empty for a benchmark run)
    if rf.arms:
        parts.append(_arms_section(rf))
    if arms:
        parts += _metrics_section(rf, arms, structures)
    base = next((a for a in arms if a.name == rf.baseline), None)
    if base is not None and len(arms) > 1:
        parts += _paired_section(rf, arms, base, structures, n_boot)
    elif arms:
        rf.missing.append("a baseline arm (arms/baseline or run.json 'baseline'): no paired differences")
    parts.append(_seeds_section(rf))
    parts.append(_agreement_section(rf))
    oracle = next((a for a in arms if a.name == rf.oracle), None)
    if base is not None and oracle is not None:
        parts.append(_gap_section(arms, base, oracle, structures))
    elif arms:
        rf.missing.append("an oracle arm (arms/oracle or run.json 'oracle'): share of the gap closed not computed")
    parts.append(_overlay_section(rf, max_cases))
    parts += _curves_section(rf)
    parts += _figures_section(rf)
    parts.append(_stages_table(rf.info.stages))
    if rf.missing:
        parts.insert(1, "<div class=missing><b>Not in this run folder</b><ul>"
                     + "".join(f"<li>{_e(m)}</li>" for m in rf.missing) + "</ul></div>")
    if rf.info.config is not None:
        parts.append("<h2>Configuration</h2><details><summary>run.json config</summary><pre>"
                     + _e(json.dumps(rf.info.config, indent=2, default=str)) + "</pre></details>")
    title = rf.info.title or f"styleseg run {rf.root.name}"
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
