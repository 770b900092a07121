"""The report's sections for the job path (a run folder with ``RUN/job/``): which model segmented the collection
and why, where the style label maps came from, what was segmented, and the label-free quality control.

Reads (all written by ``styleseg.pipeline.job``; every part optional)::

    RUN/job/model.json           {"arm", "rule": "measured" | "default" | "given", "why", "scores", "compare"}
    RUN/job/style_labels.json    {"mode": "given" | "correct" | "predicted", "styles": [{..., "label_source"}]}
    RUN/job/segment_report.json  {arm: {"done", "skipped", "failed", "slices", "seconds"}}
    RUN/job/qc/qc.json, qc.csv, thumbnails/<case>.png
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from styleseg.eval import figures
from styleseg.eval.report.tables import _e, _table

#: how the report words each mode of [job] style_labels
STYLE_LABEL_MODES = {"given": "drawn by a person (given)", "correct": "predicted by the source-only model and "
                     "corrected by a person", "predicted": "predicted by the source-only model, NOT corrected "
                     "(style_labels = \"predicted\": no human step)"}
MAX_ROWS = 50


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _model_part(job: Path) -> list[str]:
    m = _read(job / "model.json")
    if not isinstance(m, Mapping):
        return []
    scores = m.get("scores") or {}
    rows = [f"<tr><td class=l>{_e(a)}{' (chosen)' if a == m.get('arm') else ''}</td>"
            f"<td>{'–' if v is None else f'{v:.3f}'}</td></tr>" for a, v in scores.items()]
    rule = {"measured": "measured on the reference cases", "default": "documented default, no references",
            "given": "set in the experiment file"}.get(str(m.get("rule")), str(m.get("rule")))
    parts = [f"<h2 id=job-model>Which model segments the collection</h2><p><b>{_e(m.get('arm'))}</b> ({_e(rule)}). "
             f"{_e(m.get('why', ''))}</p>"]
    if m.get("compare"):
        parts.append(f"<p class=sub>Second model for the QC agreement column: {_e(m['compare'])}. Style label maps "
                     f"predicted by: {_e(m.get('labeller'))}.</p>")
    if any(v is not None for v in scores.values()):
        parts.append(_table(["arm", "mean Dice on the reference cases"], rows))
    return parts


def _styles_part(job: Path) -> list[str]:
    s = _read(job / "style_labels.json")
    if not isinstance(s, Mapping):
        return []
    rows = [f"<tr><td>{_e(x.get('index'))}</td><td class=l>{_e(x.get('case_id'))}</td><td>{_e(x.get('slice'))}</td>"
            f"<td class=l>{_e(x.get('label_source'))}</td>"
            f"<td class=l>{_e(', '.join(x.get('absent') or []) or '-')}</td></tr>" for x in s.get("styles", [])]
    return [f"<h3>Style slices' label maps</h3><p>{_e(STYLE_LABEL_MODES.get(str(s.get('mode')), s.get('mode')))}. "
            "A structure absent from a style's label map gets no texture from its generator (a slice outside the "
            "chest has no lungs: name chest slices with <code>style_slices</code>).</p>",
            _table(["style", "case", "slice", "label map from", "structures absent"], rows, left=0)]


def _segment_part(job: Path) -> list[str]:
    r = _read(job / "segment_report.json")
    if not isinstance(r, Mapping):
        return []
    rows = [f"<tr><td class=l>{_e(arm)}</td><td>{len(v.get('done', [])) + len(v.get('skipped', []))}</td>"
            f"<td>{len(v.get('failed', {}))}</td><td>{v.get('slices', 0)}</td><td class=l>{_e(v.get('out', ''))}</td>"
            "</tr>" for arm, v in r.items() if isinstance(v, Mapping)]
    parts = ["<h3>Segmented</h3>" + _table(["model", "cases", "failed", "slices (this run)", "outputs"], rows)]
    for arm, v in r.items():
        for case, why in (v.get("failed") or {}).items() if isinstance(v, Mapping) else ():
            parts.append(f"<p class=missing>{_e(arm)}: {_e(case)} failed: {_e(why)}</p>")
    return parts


def _qc_row(r: Mapping[str, Any]) -> str:
    st = r.get("structures", {})
    vol = [st.get(n, {}).get("volume_ml") for n in ("lung_left", "lung_right", "heart")]
    agree = [v.get("agreement") for v in st.values() if isinstance(v, Mapping) and v.get("agreement") is not None]
    flags = "; ".join(f.get("reason", "") for f in r.get("flags", []))
    return (f"<tr><td class=l>{_e(r.get('case'))}</td><td>{r.get('score', 0):.2f}</td>"
            f"<td class=l>{_e(r.get('style') or '')}</td>"
            + "".join(f"<td>{'–' if v is None else f'{v:.0f}'}</td>" for v in vol)
            + f"<td>{'–' if not agree else f'{min(agree):.2f}'}</td><td class=l>{_e(flags) or 'no flag'}</td></tr>")


def _qc_part(job: Path, run: Path) -> list[str]:
    q = _read(job / "qc" / "qc.json")
    if not isinstance(q, Mapping):
        return []
    recs = q.get("records", [])
    parts = [f"<h2 id=qc>Quality control without labels</h2><p class=sub>{len(recs)} of {q.get('n_cases', len(recs))} "
             f"cases checked, {q.get('n_flagged', 0)} flagged; worst first (score = sum of the flag weights plus "
             "1 - the lowest agreement; docs/qc.md). Full table: "
             f"{_e((job / 'qc' / 'qc.csv').relative_to(run))}.</p>"]
    parts.append(_table(["case", "score", "nearest style", "lung_left ml", "lung_right ml", "heart ml",
                         "min agreement", "flags"], [_qc_row(r) for r in recs[:MAX_ROWS]]))
    if len(recs) > MAX_ROWS:
        parts.append(f"<p class=sub>... {len(recs) - MAX_ROWS} more in qc.csv.</p>")
    for case, why in (q.get("failed") or {}).items():
        parts.append(f"<p class=missing>{_e(case)}: not checked: {_e(why)}</p>")
    for case, rel in (q.get("thumbnails") or {}).items():
        png = job / "qc" / rel
        if png.exists():
            parts.append(f'<figure><img src="{figures.png_file_uri(png.read_bytes())}" alt="{_e(case)}">'
                         f"<figcaption>{_e(case)}: the flagged slice (CT, prediction, second model)"
                         "</figcaption></figure>")
    return parts


def job_sections(run: Path) -> list[str]:
    """HTML parts of the job sections ([] for a benchmark run folder)."""
    job = Path(run) / "job"
    if not job.is_dir():
        return []
    return _model_part(job) + _styles_part(job) + _segment_part(job) + _qc_part(job, Path(run))
