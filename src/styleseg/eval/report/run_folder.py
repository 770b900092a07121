"""Reading a run folder for the report: what each arm holds, leniently (what is absent is listed, not fatal).

Run-folder layout read here (every part optional; documented in docs/eval.md)::

    RUN/run.json                        the run-folder contract (:mod:`styleseg.eval.report.run_info`)
    RUN/arms/<arm>/metrics.json         from `styleseg evaluate` (computed on the fly from pred/ if absent)
    RUN/arms/<arm>/pred/<case>.nii.gz   predicted label volumes on the target grid
    RUN/arms/<arm>/**/train_log.jsonl   per-epoch JSON lines: "epoch", "loss", optional "val_dice", ...
    RUN/generators/**/train_log.jsonl   generator training logs (loss curves)
    RUN/figures/*.png                   extra figures (e.g. style grid); caption from a sibling .txt
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from styleseg.errors import InputError, StylesegError
from styleseg.eval.report.run_info import RunInfo


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
        self.info = RunInfo()
        if (self.root / "run.json").exists():
            try:
                self.info = RunInfo.read(self.root)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self.missing.append(f"run.json is not valid JSON ({e}); title, timings and config not shown")
        else:
            self.missing.append("run.json (title, stage timings, config, reference dataset)")
        self.arms = self._discover_arms()
        if not self.arms:
            self.missing.append("arms/<arm>/ folders: no arm to report")
        self.target_ref = self._target_ref()
        self.baseline = self._pick(self.info.baseline, "baseline")
        self.oracle = self._pick(self.info.oracle, "oracle")

    def title(self, name: str) -> str:
        """What an arm is, as run.json describes it ("" if it does not)."""
        a = self.info.arm(name)
        return a.title if a is not None else ""

    def _pick(self, configured: str | None, default: str) -> str | None:
        names = [a.name for a in self.arms]
        if configured in names:
            return configured
        return default if default in names else None

    def _discover_arms(self) -> list[Arm]:
        adir = self.root / "arms"
        found = sorted(p.name for p in adir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if adir.is_dir() else []
        order = [a.name for a in self.info.arms]
        if order:
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
        from styleseg.eval.report.run_info import resolve_in_run

        cand = self.info.target_ref
        if cand is None:
            for a in self.arms:
                mj = a.folder / "metrics.json"
                if mj.exists():
                    try:
                        cand = json.loads(mj.read_text()).get("config", {}).get("ref")
                    except (json.JSONDecodeError, AttributeError):
                        continue
                    if cand:
                        break
        if not cand:
            return None
        p = resolve_in_run(self.root, str(cand))
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


def results_table(run_dir: str | Path, structures: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows (arm, mean Dice per structure, pixel accuracy) from each arm's metrics.json (the first seed)."""
    run_dir = Path(run_dir)
    rows = []
    for arm in [a.name for a in RunInfo.read(run_dir).arms]:
        p = run_dir / "arms" / arm / "metrics.json"
        if not p.exists():
            continue
        m = json.loads(p.read_text())
        row: dict[str, Any] = {"arm": arm}
        for s, d in m.get("mean", {}).items():
            if structures and s not in structures:
                continue
            dice = d.get("dice", {})
            if isinstance(dice, Mapping) and dice.get("mean") is not None:
                row[s] = dice["mean"]
        pa = m.get("pixel_accuracy", {})
        if isinstance(pa, Mapping):
            v = pa.get("all", pa)
            if isinstance(v, Mapping) and v.get("mean") is not None:
                row["pixel_acc"] = v["mean"]
        rows.append(row)
    return rows
