"""Report figures (matplotlib, Agg backend): CI bar charts, paired differences, overlays, curves.

Every function returns a PNG as a ``data:`` URI, so the report embeds it and needs no other file.
The overlays follow the paper's Figs. 3-4 (Bhosale et al. 2023): CT slice, reference, and each
arm's prediction side by side, structures in the label schema's colours.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from styleseg.labels import LabelSchema

log = logging.getLogger("styleseg.eval.figures")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_data_uri(fig: Any, dpi: int = 100) -> str:
    """Render a matplotlib figure to a base64 PNG data URI and close it."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_file_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _val(d: Mapping[str, Any] | None, key: str) -> float:
    v = None if d is None else d.get(key)
    return float("nan") if v is None else float(v)


def ci_bars(arms: Sequence[str], structures: Sequence[str], cis: Mapping[str, Mapping[str, Mapping[str, Any]]],
            ylabel: str, title: str, colour_index: Mapping[str, int] | None = None) -> str:
    """Grouped bars: one group per structure, one bar per arm, 95% CI error bars.

    ``cis[arm][structure]`` = ``{"mean", "ci_low", "ci_high", ...}`` (absent: no bar).
    ``colour_index[arm]`` picks the arm's tab10 colour, so an arm keeps its colour across figures.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(structures) + 0.25 * len(arms) * len(structures)), 3.6))
    width = 0.8 / max(1, len(arms))
    cmap = plt.get_cmap("tab10")
    x = np.arange(len(structures))
    for i, arm in enumerate(arms):
        m = np.array([_val(cis.get(arm, {}).get(s), "mean") for s in structures])
        lo = np.array([_val(cis.get(arm, {}).get(s), "ci_low") for s in structures])
        hi = np.array([_val(cis.get(arm, {}).get(s), "ci_high") for s in structures])
        err = np.vstack([np.nan_to_num(m - lo), np.nan_to_num(hi - m)])
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(m), width, yerr=err, capsize=2, label=arm,
               color=cmap((colour_index or {}).get(arm, i) % 10), edgecolor="black", linewidth=0.3)
    ax.set_xticks(x, [s.replace("_", " ") for s in structures])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(arms), 5), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    return to_data_uri(fig)


def diff_bars(arms: Sequence[str], structures: Sequence[str],
              diffs: Mapping[str, Mapping[str, Mapping[str, Any]]], ylabel: str, title: str,
              colour_index: Mapping[str, int] | None = None) -> str:
    """Paired differences vs the baseline with bootstrap CIs (``diffs[arm][structure]`` = paired_comparison)."""
    cis = {a: {s: {"mean": d.get("mean_diff"), "ci_low": d.get("ci_low"), "ci_high": d.get("ci_high")}
               for s, d in diffs.get(a, {}).items()} for a in arms}
    return ci_bars(arms, structures, cis, ylabel, title, colour_index)


def overlay_rgb(ct01: np.ndarray, label: np.ndarray | None, schema: LabelSchema, alpha: float = 0.45,
                skip: Sequence[str] = ("body",)) -> np.ndarray:
    """Grey CT (values in [0, 1]) with structures blended in their schema colours (body left out)."""
    rgb = np.repeat(np.clip(ct01, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    if label is None:
        return rgb
    for name, v in schema.structures:
        if name in skip:
            continue
        m = label == v
        if m.any():
            c = np.asarray(schema.colour(name), np.float32) / 255.0
            rgb[m] = (1 - alpha) * rgb[m] + alpha * c
    return rgb


def overlay_grid(rows: Sequence[Mapping[str, Any]], schema: LabelSchema, columns: Sequence[str]) -> str:
    """The paper's Figs. 3-4: one row per case; columns "CT", "reference", then each arm.

    ``rows``: ``{"title": str, "ct01": 2D array, "aspect": float, "labels": {column: 2D label or None}}``.
    """
    from matplotlib.patches import Patch

    plt = _plt()
    ncol = 1 + len(columns)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.3 * ncol, 2.4 * len(rows) + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.imshow(row["ct01"], cmap="gray", vmin=0, vmax=1, aspect=row.get("aspect", 1.0))
                ax.set_ylabel(row["title"], fontsize=8)
                if r == 0:
                    ax.set_title("CT", fontsize=9)
                continue
            col = columns[c - 1]
            lab = row["labels"].get(col)
            ax.imshow(overlay_rgb(row["ct01"], lab, schema), aspect=row.get("aspect", 1.0))
            if lab is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", color="red", transform=ax.transAxes)
            if r == 0:
                ax.set_title(col, fontsize=9)
    handles = [Patch(color=np.asarray(schema.colour(n)) / 255.0, label=n.replace("_", " "))
               for n in schema.names if n != "body"]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.subplots_adjust(wspace=0.03, hspace=0.08, bottom=0.5 / (2.4 * len(rows) + 0.5))
    return to_data_uri(fig, dpi=90)


def curves(logs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str] | None = None,
           title: str = "", x_key: str = "epoch") -> str | None:
    """Line plots of numeric log fields against ``x_key`` (or the line index); one panel per field.

    ``logs[name]`` = the records of one train_log.jsonl. ``keys`` = fields to plot (default: every
    numeric field except the x axis, at most 6). Returns None when nothing is plottable.
    """
    plt = _plt()
    if keys is None:
        found: list[str] = []
        for recs in logs.values():
            for rec in recs:
                for k, v in rec.items():
                    if k not in (x_key, "step", "time", "seconds", "lr") and isinstance(v, int | float) \
                            and not isinstance(v, bool) and k not in found:
                        found.append(k)
        keys = found[:6]
    keys = [k for k in keys if any(k in rec for recs in logs.values() for rec in recs)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        for name, recs in logs.items():
            pts = [(rec.get(x_key, i), rec[k]) for i, rec in enumerate(recs)
                   if isinstance(rec.get(k), int | float) and rec.get(k) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1.05)
    return to_data_uri(fig)
