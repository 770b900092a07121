"""Folder-level evaluation: a prediction folder against a reference dataset -> metrics.json.

``PRED/<case>.nii.gz`` label volumes (as written by ``styleseg segment``) are compared with the
reference labels of a dataset (``labelsTr`` or ``labelsRef``, whichever the case has). The layout of
metrics.json follows nnU-Net's summary.json (per-case entries, then means) and is documented in
docs/eval.md. Cases are read one at a time, so memory stays at one volume pair.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from styleseg import __version__
from styleseg.errors import ConfigError, InputError
from styleseg.eval import metrics
from styleseg.io.atomic import write_json
from styleseg.io.dataset import FILE_ENDING, Dataset
from styleseg.io.volume import read_nifti

log = logging.getLogger("styleseg.eval.evaluate")

METRICS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of the evaluation stage: bootstrap resamples for the 95% CIs, their seed, and whether HD95 is
    computed (the slowest metric on large volumes)."""

    n_boot: int = 2000
    seed: int = 0
    hd95: bool = True

    def __post_init__(self) -> None:
        if self.n_boot < 1:
            raise ConfigError(f"[evaluate].n_boot must be >= 1 (bootstrap resamples), got {self.n_boot}")


def prediction_path(pred_dir: Path, case_id: str) -> Path:
    """Where the prediction of a case lives (``.nii.gz``, or ``.nii`` if only that exists)."""
    p = Path(pred_dir) / f"{case_id}{FILE_ENDING}"
    alt = Path(pred_dir) / f"{case_id}.nii"
    return alt if not p.exists() and alt.exists() else p


def _select_cases(ds: Dataset, pred_dirs: Sequence[Path], cases: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(cases to evaluate, labelled cases skipped because a prediction is missing)."""
    labelled = [c.case_id for c in ds.labelled_cases(None)]
    if cases is not None:
        bad = [c for c in cases if c not in labelled]
        if bad:
            raise InputError(ds.root, f"cases {bad} have no reference labels in this dataset",
                             f"choose among: {', '.join(labelled) or '(none)'}")
        missing = [f"{d}/{c}" for d in pred_dirs for c in cases if not prediction_path(d, c).exists()]
        if missing:
            raise InputError(Path(missing[0]).parent, f"no prediction for {len(missing)} requested case(s): "
                             f"{', '.join(Path(m).name for m in missing[:8])}",
                             "run `styleseg segment` for them (with --continue) or drop them from --cases")
        return list(cases), []
    chosen = [c for c in labelled if all(prediction_path(d, c).exists() for d in pred_dirs)]
    skipped = [c for c in labelled if c not in chosen]
    if not chosen:
        raise InputError(pred_dirs[0], f"none of the {len(labelled)} labelled cases of {ds.root} has a "
                         f"prediction here (expected files like <case>{FILE_ENDING}"
                         + (f", e.g. {labelled[0]}{FILE_ENDING})" if labelled else ")"),
                         "point --pred at the output folder of `styleseg segment` and --ref at the dataset "
                         "that was segmented")
    if skipped:
        log.warning("%d labelled case(s) have no prediction and are not evaluated: %s", len(skipped),
                    ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    return chosen, skipped


def evaluate_case(ds: Dataset, case_id: str, pred_path: Path, structures: Sequence[str] | None = None,
                  with_hd95: bool = True) -> dict[str, Any]:
    """Metrics of one case (a per_case entry of metrics.json)."""
    ref = ds.load_label(case_id)
    assert ref is not None
    pred = read_nifti(pred_path)
    if not pred.same_grid(ref):
        raise InputError(pred_path, f"prediction is not on the reference grid: prediction "
                         f"{pred.grid_description()} vs reference {ref.grid_description()}",
                         "predict on the reference images (styleseg segment writes labels on the input grid)")
    arr = pred.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(arr == np.rint(arr)):
            raise InputError(pred_path, "prediction holds non-integer values; expected a label map",
                             "write label values (argmax), not probabilities")
    arr = arr.astype(np.int32)
    ds.schema.check_label_values(arr, str(pred_path))
    rec = ds.case(case_id)
    known = set(rec.annotated) | set(rec.derived)
    res = metrics.case_metrics(arr, ref.array.astype(np.int32), ds.schema, known, ref.spacing, structures, with_hd95)
    return {"case": case_id, "prediction": str(pred_path), **res}


def evaluate(pred_dir: Path, ref: Path, out: Path | None = None, compare: Path | None = None,
             cases: Sequence[str] | None = None, structures: Sequence[str] | None = None,
             n_boot: int = 2000, seed: int = 0, with_hd95: bool = True) -> dict[str, Any]:
    """Evaluate ``pred_dir`` against the reference labels of dataset ``ref``; write ``out`` if given.

    Missing predictions: with ``cases=None`` every labelled case that has a prediction (in
    ``pred_dir`` and, if given, ``compare``) is evaluated and the others are listed under
    ``"missing"`` (and logged); with explicit ``cases`` a missing prediction is an InputError.
    ``compare``: a second prediction folder; ``"comparison"`` then holds the paired difference
    ``pred - compare`` per structure and metric, with bootstrap CI and Wilcoxon p.
    """
    from rich.progress import Progress

    pred_dir, ref = Path(pred_dir), Path(ref)
    EvaluateConfig(n_boot=n_boot, seed=seed)  # impossible values stop here, before any work
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder does not exist", "check --pred")
    if compare is not None and not Path(compare).is_dir():
        raise InputError(compare, "comparison prediction folder does not exist", "check --compare")
    ds = Dataset(ref)
    if structures is not None:
        bad = [s for s in structures if s not in ds.schema.names]
        if bad:
            raise InputError(ref, f"structures {bad} are not in the dataset's label schema",
                             f"choose among {', '.join(ds.schema.names)}")
    names = list(structures) if structures is not None else list(ds.schema.names)
    dirs = [pred_dir] + ([Path(compare)] if compare is not None else [])
    chosen, skipped = _select_cases(ds, dirs, cases)
    per_case: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    with Progress(transient=True) as prog:
        task = prog.add_task("evaluating", total=len(chosen) * len(dirs))
        for cid in chosen:
            per_case.append(evaluate_case(ds, cid, prediction_path(pred_dir, cid), names, with_hd95))
            prog.advance(task)
            if compare is not None:
                other.append(evaluate_case(ds, cid, prediction_path(Path(compare), cid), names, with_hd95))
                prog.advance(task)
    summary = metrics.summarise(per_case, names, n_boot, seed)
    result: dict[str, Any] = {
        "format_version": METRICS_FORMAT_VERSION,
        "config": {
            "pred": str(pred_dir), "ref": str(ref), "compare": None if compare is None else str(compare),
            "structures": names, "n_boot": n_boot, "seed": seed, "ci_level": 0.95, "ci_method": "percentile bootstrap",
            "hd95": "mm, symmetric 95th percentile of surface distances; one mask empty -> grid diagonal (capped)",
            "empty_both": "dice=iou=1, hd95=0", "styleseg_version": __version__,
        },
        "cases": chosen,
        "missing": skipped,
        "per_case": per_case,
        **summary,
    }
    if compare is not None:
        result["comparison"] = {
            "other": str(compare), "difference": "pred - compare",
            "other_mean": metrics.summarise(other, names, n_boot, seed),
            "other_per_case": other,
            **metrics.compare_cases(per_case, other, names, n_boot, seed),
        }
    if out is not None:
        write_json(out, _json_clean(result))
        log.info("wrote %s", out)
    return result


def _json_clean(o: Any) -> Any:
    """NaN/inf -> None so metrics.json is strict JSON (readable by any parser)."""
    if isinstance(o, dict):
        return {k: _json_clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_json_clean(v) for v in o]
    if isinstance(o, float | np.floating) and not np.isfinite(o):
        return None
    if isinstance(o, np.generic):
        return o.item()
    return o


def load_metrics(path: Path) -> dict[str, Any]:
    """Read a metrics.json (None values stay None; the statistics functions drop them)."""
    import json

    path = Path(path)
    if not path.exists():
        raise InputError(path, "metrics file does not exist", "create it with `styleseg evaluate`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON ({e})", "re-create it with `styleseg evaluate`") from e
    if "per_case" not in data or "mean" not in data:
        raise InputError(path, "not a styleseg metrics.json (no per_case/mean)",
                         "re-create it with `styleseg evaluate`")
    return data
