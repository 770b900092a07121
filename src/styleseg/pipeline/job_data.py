"""The data side of the job path: reference labels, the style pool, style slices at the training spacing, and
the choice of the model that segments the collection (docs/job.md).

- :func:`reference_cases` / :func:`build_reference`: the target cases with reference labels (``[data]
  reference``, or labels the target carries) as ``RUN/data/target_test``: target images + reference labels in
  ``labelsRef``, the evaluation set of the arms (nothing trains on it);
- :func:`style_pool`: the target cases style slices may come from (not the reference cases, when others exist,
  so that a corrected style slice never sits in an evaluated case);
- :func:`resample_styles`: style slices of another pixel spacing enter the generators resampled to the source's
  training spacing with the predictor's own resampler (the texture the U-Net sees at test time);
- :func:`choose_model`: which arm's model segments the collection, and why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.errors import ConfigError, InputError
from styleseg.io.dataset import Dataset, DatasetWriter
from styleseg.io.volume import Volume
from styleseg.style.styleset import StyleSlice

log = logging.getLogger("styleseg.pipeline.job")

#: why the labeller (source-only, the reference recipe where it is an arm) is the default model without references
DEFAULT_WHY = ("No reference labels, so no arm could be measured on this collection: the documented default, the "
               "source-only labeller (the reference recipe where it is an arm: position channels + intensity "
               "augmentation). In BENCHMARKS.md (real CT re-imaged at a twentieth of the dose, 3 seeds) that recipe "
               "reached lungs 0.96, heart 0.80, oesophagus 0.58, cord 0.79 Dice; the oracle trained on the target "
               "texture and styleseg fine-tuning the reference were level with it (no resolved difference), "
               "physics randomisation fine-tuning it gained on the cord only (+0.027); give [data] reference labels "
               "for a few cases to choose by measurement.")


def import_reference(spec: str, out: Path) -> None:
    """``[data] reference`` at ``out``: a dataset folder is copied, anything else imported (DICOM + RTSTRUCT/SEG,
    NIfTI pairs)."""
    import shutil

    from styleseg.io.dataset import subset_dataset
    from styleseg.io.importer import import_sources

    if out.exists():
        shutil.rmtree(out)
    p = Path(spec)
    if (p / "dataset.json").exists():
        subset_dataset(p, [c.case_id for c in Dataset(p)], out, name="reference labels")
    else:
        import_sources([p], out, name="reference labels")


def reference_cases(target: Path, reference: Path | None) -> list[str]:
    """Target case ids with reference labels: those of ``reference`` (each must be a target case), or the
    target's own labelled cases."""
    tgt = Dataset(target)
    if reference is None:
        return [c.case_id for c in tgt.labelled_cases(None)]
    ref = Dataset(reference)
    known = {c.case_id for c in tgt.cases}
    labelled = [c.case_id for c in ref.labelled_cases(None)]
    unknown = sorted(set(labelled) - known)
    if unknown:
        raise InputError(reference / "dataset.json", f"reference case(s) {unknown} are not target cases "
                         f"(target: {', '.join(sorted(known)[:8])}{' ...' if len(known) > 8 else ''})",
                         "name the reference labels after the target cases they belong to")
    if not labelled:
        raise InputError(reference, "the reference dataset holds no labels", "point [data] reference at labels")
    return sorted(labelled)


def build_reference(target: Path, reference: Path | None, cases: Sequence[str], out: Path) -> None:
    """``out``: the reference cases with the target's images and the reference labels in labelsRef."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    tgt = Dataset(target)
    ref = Dataset(reference) if reference is not None else tgt
    with DatasetWriter(out, "target cases with reference labels (evaluation only)", tgt.schema) as w:
        for cid in cases:
            img = tgt.load_image(cid)
            lab = ref.load_label(cid)
            assert lab is not None
            if not img.same_grid(lab):
                raise InputError(ref.label_path(cid), f"reference label of {cid} is not on the target image's grid "
                                 f"({lab.grid_description()} vs {img.grid_description()})",
                                 "give labels drawn on the target series itself")
            rec = ref.case(cid)
            w.add_case(cid, img, img.with_array(lab.array), annotated=list(rec.annotated), derived=list(rec.derived),
                       label_role="labelsRef", **tgt.case(cid).extras)


def style_pool(target: Path, refs: Sequence[str], patients: Sequence[str] = ()) -> list[str]:
    """Cases of the style pool: of ``patients`` if given, else every case but the reference cases (all cases when
    every one is a reference)."""
    ds = Dataset(target)
    if patients:
        pool = [c.case_id for c in ds.cases if c.patient in set(patients)]
        if not pool:
            raise ConfigError(f"[data].style_pool: none of {list(patients)} is a target patient")
        return pool
    pool = [c.case_id for c in ds.cases if c.case_id not in set(refs)]
    if not pool:
        log.warning("every target case has reference labels: style slices come from evaluated cases")
        pool = [c.case_id for c in ds.cases]
    return pool


def resample_styles(styles: Sequence[StyleSlice], train_mm: float | None) -> list[StyleSlice]:
    """Style slices as the U-Net will see target slices of their spacing: resampled to ``train_mm`` by the
    predictor's rule (:func:`styleseg.seg.resample.resample_slice`; labels nearest), unchanged within its
    tolerance. A resampled slice keeps its physical extent (first pixel centre moved by half the change)."""
    from styleseg.seg.resample import resample_labels, resample_slice

    out = []
    for s in styles:
        hu, sp = resample_slice(s.hu, s.image.spacing[:2], train_mm)
        if sp == tuple(s.image.spacing[:2]):
            out.append(s)
            continue
        d = np.asarray(s.image.direction, float).reshape(3, 3)
        shift = d @ np.array([(sp[0] - s.image.spacing[0]) / 2, (sp[1] - s.image.spacing[1]) / 2, 0.0])
        origin = tuple((np.asarray(s.image.origin) + shift).tolist())
        img = Volume(np.rint(hu)[None].astype(np.int16), (sp[0], sp[1], s.image.spacing[2]), origin,
                     s.image.direction, dict(s.image.tags))
        lab = None if s.label_map is None else img.with_array(resample_labels(s.label_map, hu.shape)[None])
        tags = {**s.tags, "resampled_from_mm": [round(float(v), 4) for v in s.image.spacing[:2]]}
        out.append(StyleSlice(s.index, s.case_id, s.slice, img, lab, s.label_source, s.cluster_size, tags,
                              s.why + f"; resampled {s.image.spacing[0]:.3f} -> {sp[0]:.3f} mm"))
    return out


def _mean_dice(metrics: Mapping[str, Any]) -> float | None:
    vals = [d["dice"]["mean"] for d in metrics.get("mean", {}).values()
            if isinstance(d, Mapping) and isinstance(d.get("dice"), Mapping) and d["dice"].get("mean") is not None]
    return float(np.mean(vals)) if vals else None


def choose_model(run: Path, arms: Sequence[str], labeller: str, segment_with: str, has_refs: bool,
                 ) -> dict[str, Any]:
    """Which arm segments the collection: ``segment_with`` if set, else the best mean Dice (over the structures,
    on the reference cases) when there are references, else the labeller (see DEFAULT_WHY)."""
    scores: dict[str, float | None] = {}
    for a in arms:
        mj = run / "arms" / a / "metrics.json"
        scores[a] = _mean_dice(json.loads(mj.read_text())) if mj.exists() else None
    if segment_with != "auto":
        if segment_with not in arms:
            raise ConfigError(f"[job].segment_with {segment_with!r} is not a trained arm of this run "
                              f"({', '.join(arms)})")
        return {"arm": segment_with, "rule": "given", "scores": scores,
                "why": f"[job] segment_with = {segment_with!r} in the experiment file."}
    measured = {a: v for a, v in scores.items() if v is not None}
    if has_refs and measured:
        best = max(measured, key=lambda a: (measured[a], -list(arms).index(a)))
        table = ", ".join(f"{a} {v:.3f}" for a, v in sorted(measured.items(), key=lambda t: -t[1]))
        return {"arm": best, "rule": "measured", "scores": scores,
                "why": f"Best mean Dice over the structures on the reference cases ({table})."}
    return {"arm": labeller, "rule": "default", "scores": scores, "why": DEFAULT_WHY}


def compare_arm(chosen: str, arms: Sequence[str], labeller: str, compare_with: str, aug_arms: Sequence[str]
                ) -> str | None:
    """The second model whose predictions QC compares with (agreement): ``compare_with``, or with "auto" a
    styleseg arm when the chosen model is source-only and the labeller otherwise; None for "none" or no other arm."""
    if compare_with == "none":
        return None
    if compare_with != "auto":
        if compare_with not in arms:
            raise ConfigError(f"[job].compare_with {compare_with!r} is not a trained arm ({', '.join(arms)})")
        return compare_with if compare_with != chosen else None
    if chosen not in aug_arms:
        return next((a for a in aug_arms if a != chosen), next((a for a in arms if a != chosen), None))
    return labeller if labeller != chosen else next((a for a in arms if a != chosen), None)
