"""The job path of ``styleseg run``: segment a whole unannotated target collection, as the paper does (docs/job.md).

:func:`run_pipeline` decides between the benchmark (:func:`styleseg.pipeline.experiment.run_experiment`) and the
job (:class:`Job`): ``[job] mode``, or with ``"auto"`` the target (no labels at all, or a ``[data] reference``:
the job). The job's stages, in order (each skipped when done for the same config, like the benchmark's)::

    data            source and target imported (DICOM trees with many series, NIfTI, or both)
    reference       [data] reference labels, if given;   split: the style pool and the reference cases
    train_<labeller>   the strongest source-only U-Net (the reference recipe where it is an arm), trained first
    pick_styles     n style slices of the pool, their label maps predicted by the labeller
    styles          the human step ([job] style_labels, pipeline/style_labels.py): pauses the run until the
                    corrected maps are there; then the style set at the training spacing (job_data.py)
    generators, augment, figures, train_<arm>   as in the benchmark
    predict_/evaluate_<arm>   on the reference cases only (RUN/data/target_test), where references exist
    choose          which model segments the collection, and why (RUN/job/model.json)
    segment         every target case: RUN/job/segmentations/<case>.nii.gz (+ <case>.dcm DICOM SEG for DICOM
                    inputs), the comparison model's in RUN/job/compare/<arm>/; streaming, resumable, sharded
    qc              RUN/job/qc/ (qc.csv, qc.json, thumbnails/): label-free quality control
    report          RUN/report.html with the job's sections

``--until segment`` stops before the segmentation (the preparation job of a Slurm array); ``--shard i/n``
segments part i of n and nothing else, and requires every earlier stage to be finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from styleseg.config import to_dict
from styleseg.errors import ConfigError, StylesegError
from styleseg.io.atomic import write_json, write_text
from styleseg.pipeline import data as pdata
from styleseg.pipeline import job_data, style_labels
from styleseg.pipeline.arms import ARMS, Arm
from styleseg.pipeline.config import ExperimentConfig
from styleseg.pipeline.experiment import GENERATORS, Experiment, run_experiment
from styleseg.pipeline.job_config import JobConfig

log = logging.getLogger("styleseg.pipeline.job")

#: exit status of `styleseg run` while the run waits for the human step
PAUSED_EXIT = 3
#: ``[job] labeller = "auto"``: the first of these that is an arm of the experiment, else ``baseline``. The
#: reference recipe (position channels + intensity augmentation) first: the strongest source-only U-Net in every
#: comparison of BENCHMARKS.md, so it draws the style label maps and, without references, segments the collection
LABELLERS = ("reference", "position")


class JobPaused(StylesegError):
    """The run stopped for the human step (style label maps to correct or supply); re-run to continue."""

    def __init__(self, folder: Path, message: str):
        self.folder = folder
        super().__init__(message)


class Job(Experiment):
    """The job path in ``run_dir`` (see the module docstring); reuses the benchmark's stages where they fit."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, on_event: Callable[[str, str], None] | None = None,
                 shard: tuple[int, int] | None = None, until: str | None = None):
        super().__init__(cfg, run_dir, on_event)
        self.job = cfg.job or JobConfig()
        self.shard = shard
        self.until = until
        self.target = self.data_dir / "target"
        self.jobdir = self.run / "job"
        self.refs: list[str] = []
        self.trained: list[str] = []
        self.choice: dict[str, Any] = {}
        self.warned = False

    # -- bookkeeping ---------------------------------------------------------------------------
    def _stage(self, name: str, cfg: Any, upstream: list[str], outputs: list[Path],
               build: Callable[[bool], Any]) -> None:
        """As the benchmark's; a sharded run never builds a stage: every stage before the segmentation must be done."""
        if self.shard is not None:
            from styleseg.config import config_hash

            h = config_hash(cfg, extra=[self.hashes[u] for u in upstream])
            if not self.stages.done(name, h, outputs):
                raise ConfigError(f"--shard: stage {name!r} is not finished in {self.run}; run `styleseg run "
                                  "EXPERIMENT --out RUN --until segment` once before the shards")
            self.hashes[name] = h
            return
        super()._stage(name, cfg, upstream, outputs, build)

    def write_run_info(self) -> None:
        from styleseg.eval.report.run_info import ArmInfo, RunInfo

        chosen = self.choice.get("arm")
        RunInfo(title=self.cfg.name, preset=self.cfg.preset, seeds=[self.seeds[0]],
                arms=[ArmInfo(a, ARMS[a].title, "chosen" if a == chosen else ARMS[a].role) for a in self.trained],
                baseline="baseline", oracle=None, target_ref="data/target_test" if self.refs else None,
                stages=self.stages.timings(), config=self.cfg.resolved(),
                description="Job path: the whole unannotated target collection segmented; metrics only on the "
                            "reference cases" + ("" if self.refs else " (none given)") + ".").write(self.run)

    def pool_cases(self) -> list[str]:
        return json.loads((self.run / "split.json").read_text())["style_pool"]

    def pool_slices(self) -> list[Any]:
        return pdata.pool_slices(self.target, self.pool_cases())

    def model(self, arm: str) -> Path:
        return self.run / "arms" / arm / "model"

    # -- data ----------------------------------------------------------------------------------
    def stage_data(self) -> None:
        """The benchmark's data stage (same hash: a run folder switching paths does not re-import); the
        reference is its own stage."""
        if "data" in self.hashes:  # done already (run_pipeline imported to decide the path)
            return
        full = self.cfg
        self.cfg = dataclasses.replace(full, data=dataclasses.replace(full.data, reference=None))
        try:
            super().stage_data()
        finally:
            self.cfg = full

    def stage_reference(self) -> None:
        spec = self.cfg.data.reference
        refdir = self.data_dir / "reference"
        if spec is not None:
            self._stage("reference", {"reference": spec}, [], [refdir],
                        lambda stale: job_data.import_reference(spec, refdir))
        ref = refdir if spec is not None else None
        self.refs = job_data.reference_cases(self.target, ref)
        test = self.data_dir / "target_test"
        if self.refs:
            self._stage("reference_set", {"cases": self.refs}, ["data"] + (["reference"] if ref else []), [test],
                        lambda stale: job_data.build_reference(self.target, ref, self.refs, test))

    def stage_split(self) -> None:
        out = self.run / "split.json"

        def build(stale: bool) -> None:
            pool = job_data.style_pool(self.target, self.refs, self.cfg.data.style_pool)
            write_json(out, {"style_pool": pool, "reference": self.refs, "path": "job"})
        self._stage("split", {"job": True, "refs": self.refs, "pool": list(self.cfg.data.style_pool)},
                    ["data"], [out], build)

    # -- styles and the human step --------------------------------------------------------------
    def labeller(self) -> Arm:
        """The source-only arm whose model labels the style slices (and, without references, segments)."""
        name = self.job.labeller if self.job.labeller != "auto" else next(
            (a for a in LABELLERS if a in self.cfg.arms), "baseline")
        if name not in self.cfg.arms or ARMS[name].train_on != ("source",) or not ARMS[name].trains:
            raise ConfigError(f"[job].labeller {name!r} must be a source-only arm of this experiment")
        if name == "baseline" and not self.cfg.seg_config().position and not self.warned:
            self.warned = True
            log.warning("the style label maps come from the paper's U-Net without position channels; set "
                        "[train_seg] position = true (or add the position arm) for better ones")
        return ARMS[name]

    def stage_pick_styles(self, labeller: Arm) -> None:
        out = self.run / "styles_picked"
        predict = self.job.style_labels != "given"

        def build(stale: bool) -> None:
            from styleseg.style.select import pick_styles

            pdata._clear(out)
            pool = set(self.pool_cases())
            exclude = [c.case_id for c in _dataset(self.target).cases if c.case_id not in pool]
            manual = [(s.rpartition(":")[0], int(s.rpartition(":")[2])) for s in self.cfg.style_slices] or None
            pick_styles(self.target, self.cfg.n_styles, out, manual=manual, seed=self.cfg.seed, exclude_cases=exclude,
                        labels_from=self.model(labeller.name) if predict else None, config=self.cfg.select)
        self._stage("pick_styles", {"n": self.cfg.n_styles, "manual": list(self.cfg.style_slices), "predict": predict,
                                    "select": to_dict(self.cfg.select), "seed": self.cfg.seed},
                    ["split"] + ([f"train_{labeller.name}"] if predict else []), [out / "styles.json"], build)

    def stage_styles(self) -> None:
        """The human step, then the final style set (RUN/styles) at the source's training spacing."""
        from styleseg.style.styleset import StyleSet

        mode, review = self.job.style_labels, self.run / style_labels.REVIEW_DIR
        picked = StyleSet.load(self.run / "styles_picked")
        labels, files, content = None, [], "predicted"
        if mode != "predicted":
            target = _dataset(self.target)
            if not style_labels.ensure_review(review, picked, target, mode, self.hashes["pick_styles"],
                                              write=self.shard is None):
                raise JobPaused(review, f"style label maps to {'correct' if mode == 'correct' else 'draw'}: "
                                + style_labels.instructions(review, picked, mode))
            missing = style_labels.missing_labels(review, picked)
            if missing:
                raise JobPaused(review, f"{len(missing)} of {len(picked.styles)} style label map(s) still missing in "
                                f"{review}: " + ", ".join(style_labels.label_file(s.index) for s in missing)
                                + ". " + style_labels.instructions(review, picked, mode))
            labels = style_labels.read_labels(review, picked, target)
            files = [str(review / style_labels.label_file(s.index)) for s in picked.styles]
            content = style_labels.content_hash(labels)
        train_mm = json.loads((self.model(self.labeller().name) / "model.json").read_text()).get("train_spacing_mm")
        out = self.run / "styles"

        def build(stale: bool) -> None:
            source = {"predicted": f"model:{self.model(self.labeller().name)} (predicted, not corrected)",
                      "correct": "corrected", "given": "given"}[mode]
            styles = style_labels.labelled_styles(picked, labels, source, files)
            styles = job_data.resample_styles(styles, train_mm if self.job.resample else None)
            StyleSet(picked.dataset, picked.schema, picked.method, styles,
                     {**picked.extras, "style_labels": mode}).save(out, overwrite=True)
            prov = style_labels.provenance(styles, mode, picked.schema)
            for s, rec in zip(styles, prov["styles"], strict=True):
                if rec["absent"]:
                    log.warning("%s", style_labels.absent_warning(s, rec["absent"]))
            write_json(self.jobdir / "style_labels.json", prov)
        self._stage("styles", {"mode": mode, "labels": content, "train_mm": train_mm, "resample": self.job.resample},
                    ["pick_styles"], [out / "styles.json"], build)

    # -- the collection ------------------------------------------------------------------------
    def stage_choose(self, aug_arms: list[str]) -> None:
        out = self.jobdir / "model.json"
        lab = self.labeller().name

        def build(stale: bool) -> None:
            choice = job_data.choose_model(self.run, self.trained, lab, self.job.segment_with, bool(self.refs))
            choice["compare"] = job_data.compare_arm(choice["arm"], self.trained, lab, self.job.compare_with, aug_arms)
            choice["labeller"] = lab
            write_json(out, choice)
        upstream = [f"evaluate_{a}" for a in self.trained if f"evaluate_{a}" in self.hashes]
        self._stage("choose", {"arms": self.trained, "segment_with": self.job.segment_with,
                               "compare_with": self.job.compare_with, "refs": bool(self.refs)},
                    upstream + [f"train_{a}" for a in self.trained], [out], build)
        self.choice = json.loads(out.read_text())

    def _outputs(self) -> list[tuple[str, Path, bool]]:
        """(arm, output folder, with DICOM SEG) of the chosen model and the comparison model."""
        outs = [(self.choice["arm"], self.jobdir / "segmentations", self.job.dicom_seg)]
        if self.choice.get("compare"):
            outs.append((self.choice["compare"], self.jobdir / "compare" / self.choice["compare"], False))
        return outs

    def prepare_outputs(self) -> None:
        """Output folders stamped with their model (SHA-1 of the weights); outputs of another model are removed."""
        import hashlib

        for arm, out, _ in self._outputs():
            ident = hashlib.sha1((self.model(arm) / "weights.pt").read_bytes()).hexdigest()
            stamp = out / ".model_sha1"
            if out.exists() and (not stamp.exists() or stamp.read_text().strip() != ident):
                if self.shard is not None:
                    raise ConfigError(f"--shard: {out} holds another model's outputs; run `styleseg run EXPERIMENT "
                                      "--out RUN --until segment` once before the shards")
                pdata._clear(out)
            out.mkdir(parents=True, exist_ok=True)
            write_text(stamp, ident + "\n")

    def segment_collection(self, part: tuple[int, int] = (0, 1)) -> dict[str, Any]:
        """Every target case (or part ``part`` of them) with the chosen and the comparison model."""
        from styleseg.seg.segment import segment

        j, reports = self.job, {}
        self.prepare_outputs()
        for arm, out, seg in self._outputs():
            opts = dict(continue_=True, dicom_seg=seg, batch_size=j.batch_size, chunk_slices=j.chunk_slices,
                        resample=j.resample, **self.predict_options())
            if j.executor == "dask" and part == (0, 1):
                from styleseg.seg.distributed import segment_dask

                rep = segment_dask([self.target], self.model(arm), out, parts=j.parts, scheduler=j.dask_scheduler,
                                   workers=j.workers, **opts)
            else:
                rep = segment([self.target], self.model(arm), out, part_id=part[0], num_parts=part[1], **opts)
            reports[arm] = rep.to_json()
        return reports

    def stage_segment(self) -> None:
        upstream = ["choose", "data"] + [f"train_{a}" for a, _, _ in self._outputs()]
        outs = [o for _, o, _ in self._outputs()]

        def build(stale: bool) -> None:
            write_json(self.jobdir / "segment_report.json", self.segment_collection())
        self._stage("segment", {"outputs": [[a, str(o.relative_to(self.run)), s] for a, o, s in self._outputs()],
                                "resample": self.job.resample}, upstream, outs + [self.jobdir / "segment_report.json"],
                    build)

    def stage_qc(self) -> None:
        out = self.jobdir / "qc"

        def build(stale: bool) -> None:
            from styleseg.eval.qc_collection import qc_collection
            from styleseg.style.nearest import nearest_styles

            styles = nearest_styles(self.target, self.run / "styles") if (self.run / "styles").exists() else None
            other = self._outputs()[1][1] if len(self._outputs()) > 1 else None
            pdata._clear(out)
            qc_collection(self.target, self.jobdir / "segmentations", out, other, styles, self.job.max_thumbnails)
        self._stage("qc", {"max_thumbnails": self.job.max_thumbnails},
                    ["segment"] + (["styles"] if "styles" in self.hashes else []), [out / "qc.csv"], build)

    def stage_report(self) -> Path:
        out = self.run / "report.html"

        def build(stale: bool) -> None:
            from styleseg.eval.report import write_report

            self.write_run_info()
            write_report(self.run, out)
        upstream = [f"evaluate_{a}" for a in self.trained if f"evaluate_{a}" in self.hashes] + ["choose", "qc"]
        self._stage("report", {"arms": self.trained, "job": True}, upstream, [out], build)
        return out

    # -- everything ----------------------------------------------------------------------------
    def job_arms(self) -> list[Arm]:
        """The arms the job trains: those that are a model (no test-time step, no oracle: the job has no target
        protocol to re-image with); the others are listed as skipped."""
        out = []
        for a in (ARMS[n] for n in self.cfg.arms):
            if a.test_time or not a.trains or "oracle" in a.train_on:
                self.skipped_arms[a.name] = "the job segments with trained models only (no oracle, no test-time step)"
            elif a.rounds:
                self.skipped_arms[a.name] = "cyclic rounds run on the benchmark path only"
            elif a.starts_from in self.skipped_arms:
                self.skipped_arms[a.name] = f"it starts from the model of {a.starts_from}, which the job skips"
            else:
                out.append(a)
        return sorted(out, key=lambda a: a.starts_from is not None)  # a fine-tuning after the model it starts from

    def run_all(self) -> dict[str, Any]:
        from styleseg.config import dump_toml

        if self.shard is None:
            write_text(self.run / "experiment.toml", dump_toml(self.cfg.resolved()))
        arms = self.job_arms()
        labeller = self.labeller()
        self.stage_data()
        self.stage_reference()
        self.stage_split()
        seed = self.seeds[0]  # the job trains each model once: its first seed (seeds are for benchmarks)
        self.trained = [labeller.name]
        self.stage_train_arm(labeller, seed)
        needed = {d for a in arms for d in a.train_on}
        if "physics" in needed:
            self.stage_physics_data(seed)
        if self.cfg.needs_styles:
            self.stage_pick_styles(labeller)
            self.stage_styles()
            for conditional in (False, True):
                if GENERATORS[conditional][3] in needed:
                    gens = self.stage_generators(conditional, seed)
                    self.stage_augment(conditional, gens, seed)
                    if not conditional:
                        self.stage_figures(gens)
        for arm in arms:
            if arm.name != labeller.name:
                self.stage_train_arm(arm, seed)
                self.trained.append(arm.name)
        if self.refs:  # every arm is measured on the reference cases (and only there)
            for name in self.trained:
                self.stage_predict_arm(ARMS[name], seed)
            for name in self.trained:
                self.stage_evaluate_arm(ARMS[name], seed)
        if self.cfg.data.agreement_pairs:  # same-scan pairs: label-free texture robustness of every arm
            self.stage_agreement()
        self.stage_choose([a.name for a in arms if a.train_on != ("source",)])
        summary: dict[str, Any] = {"job": True, "model": self.choice, "skipped_arms": self.skipped_arms,
                                   "run": str(self.run)}
        if self.until == "segment":
            self.prepare_outputs()
            return {**summary, "stopped_before": "segment", "timings": self.stages.timings(), "all_skipped": False}
        if self.shard is not None:
            summary["shard"] = self.segment_collection(self.shard)
            return {**summary, "timings": self.stages.timings(), "all_skipped": False}
        self.stage_segment()
        self.stage_qc()
        summary["report"] = str(self.stage_report())
        summary["qc"] = str(self.jobdir / "qc" / "qc.csv")
        return {**summary, "timings": self.stages.timings(), "all_skipped": all(r.skipped for r in self.stages.results)}


def _dataset(path: Path) -> Any:
    from styleseg.io.dataset import Dataset

    return Dataset(path)


def is_job(job: Job) -> bool:
    """The path ``job.cfg`` takes (module docstring): ``[job] mode``, or for "auto" the target's labels after
    import (the data stage is shared by both paths, so importing to decide costs nothing)."""
    cfg = job.cfg
    if job.job.mode != "auto":
        return job.job.mode == "job"
    if cfg.data.benchmark or cfg.data.target_protocols:
        return False
    if cfg.data.reference is not None:
        return True
    job.stage_data()
    return not _dataset(job.target).labelled_cases(None)


def run_pipeline(cfg: ExperimentConfig, run_dir: str | Path, on_event: Callable[[str, str], None] | None = None,
                 shard: tuple[int, int] | None = None, until: str | None = None) -> dict[str, Any]:
    """Run (or continue) ``cfg`` in ``run_dir`` on the benchmark or the job path; a paused job returns
    ``{"paused": message, "review": folder}`` instead of raising."""
    run_dir = Path(run_dir)
    if until not in (None, "segment"):
        raise ConfigError(f"--until {until!r}: the only stop is 'segment' (stop before segmenting the collection)")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"--shard {shard[0]}/{shard[1]}: need 0 <= i < n")
    job = Job(cfg, run_dir, on_event, shard=shard, until=until)
    if not is_job(job):
        if shard is not None or until is not None:
            raise ConfigError("--shard and --until are for the job path (a target without labels, docs/job.md)")
        return run_experiment(cfg, run_dir, on_event)
    try:
        return job.run_all()
    except JobPaused as p:
        return {"job": True, "paused": str(p), "review": str(p.folder), "run": str(run_dir)}
