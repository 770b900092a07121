"""The whole experiment in one run folder: data -> styles -> generators -> augment -> arms -> report.

:func:`run_experiment` runs the stages in order (ARCHITECTURE.md) through a
:class:`~styleseg.pipeline.stages.StageRunner`, which skips a stage whose outputs exist for the same resolved
config and upstream hashes, so ``styleseg run`` on a finished run does nothing and an interrupted run
continues where it stopped (training stages resume from their full-state checkpoints). What each arm does is
data (:mod:`styleseg.pipeline.arms`); this module only orders the stages.

Run folder layout (``RUN/run.json`` is the contract with the report, :mod:`styleseg.eval.report.run_info`)::

    RUN/experiment.toml          the resolved configuration
    RUN/run.json                 title, arms, roles, stage timings, the evaluation dataset (relative path)
    RUN/stages/<stage>.json      finished-stage markers (config hash, seconds)
    RUN/data/source, target      the datasets (imported, simulated or built-in benchmark)
    RUN/data/target_pool         target patients reserved for style slices (never tested)
    RUN/data/target_test         the target test set (its labels are in labelsRef: evaluation only)
    RUN/styles/                  the style set (styles.json, slices, label maps, contact sheet)
    RUN/generators/separate/     one generator per style;  RUN/generators/conditional/: one for all
    RUN/data/aug_separate, aug_conditional, oracle   the training datasets of the arms that need them
    RUN/arms/<arm>/model/        segmentation model (+ train_log.jsonl)
    RUN/arms/<arm>/pred/         predictions on the target test set
    RUN/arms/<arm>/metrics.json  metrics (paired comparison against the baseline)
    RUN/report.html
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.config import dump_toml, hash_view, load_toml, to_dict
from styleseg.io.atomic import write_json, write_text
from styleseg.pipeline import data as pdata
from styleseg.pipeline.arms import ARMS, TEST_TIME, TRANSFORMS, Arm
from styleseg.pipeline.config import ExperimentConfig
from styleseg.pipeline.stages import StageRunner

log = logging.getLogger("styleseg.pipeline")

#: the stage and folder of each kind of generator
GENERATORS = {False: ("generators", "separate", "augment", "aug_separate"),
              True: ("generators_cond", "conditional", "augment_cond", "aug_conditional")}


class Experiment:
    """Runs an :class:`ExperimentConfig` in ``run_dir``; each ``stage_*`` method is one stage."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path,
                 on_event: Callable[[str, str], None] | None = None):
        self.cfg = cfg
        self.run = Path(run_dir)
        self.run.mkdir(parents=True, exist_ok=True)
        self.stages = StageRunner(self.run, on_event)
        self.data_dir = self.run / "data"
        self.hashes: dict[str, str] = {}
        self.datasets: dict[str, Path] = {"source": self.data_dir / "source"}
        self.skipped_arms: dict[str, str] = {}

    # -- bookkeeping ---------------------------------------------------------------------------
    def _stage(self, name: str, cfg: Any, upstream: list[str], outputs: list[Path],
               build: Callable[[bool], Any]) -> None:
        """Run stage ``name`` unless it is up to date. ``build(stale)`` does the work; ``stale`` is True when a
        finished marker of another config or upstream exists, so training stages start over instead of resuming
        (a missing marker means the stage was interrupted: resume)."""
        stale = self.stages.marker(name).exists()
        res = self.stages.run(name, cfg, [self.hashes[u] for u in upstream], outputs, lambda: build(stale))
        self.hashes[name] = res.hash
        self.write_run_info()

    def write_run_info(self) -> None:
        from styleseg.eval.report.run_info import ArmInfo, RunInfo

        RunInfo(title=self.cfg.name, preset=self.cfg.preset, seeds=[self.cfg.seed],
                arms=[ArmInfo(a, ARMS[a].title, ARMS[a].role) for a in self.cfg.arms],
                baseline="baseline", oracle="oracle" if "oracle" in self.cfg.arms else None,
                target_ref="data/target_test", stages=self.stages.timings(),
                config=self.cfg.resolved()).write(self.run)

    def pool_cases(self) -> list[str]:
        return json.loads((self.run / "split.json").read_text())["style_pool"]

    # -- the ArmContext of transform builders ------------------------------------------------------
    def pool_slices(self) -> list[np.ndarray]:
        return pdata.pool_slices(self.data_dir / "target_pool", self.pool_cases())

    def source_slices(self) -> list[np.ndarray]:
        from styleseg.io.dataset import Dataset

        src = self.datasets["source"]
        return pdata.pool_slices(src, [r.case_id for r in Dataset(src)][:4])

    # -- data ----------------------------------------------------------------------------------
    def stage_data(self) -> None:
        c = self.cfg.data
        src, tgt = self.data_dir / "source", self.data_dir / "target"
        if c.benchmark:
            self._stage("data", {"benchmark": pdata.benchmark_overrides(self.cfg), "preset": self.cfg.preset,
                                 "seed": self.cfg.seed}, [], [src, tgt],
                        lambda stale: pdata.build_benchmark(self.data_dir, self.cfg))
            return

        def build(stale: bool) -> None:
            pdata.import_side(c.source, c.source_dataset, c.source_cases, src, c.cases_json)
            if c.target_protocols:
                pdata.simulated_target(c, self.cfg.seed, tgt)
            else:
                pdata.import_side(c.target, c.target_dataset, c.target_cases, tgt, c.cases_json)
        self._stage("data", hash_view(c) | {"seed": self.cfg.seed}, [], [src, tgt], build)

    def stage_split(self) -> None:
        from styleseg.io.dataset import subset_dataset

        pool_dir, test_dir = self.data_dir / "target_pool", self.data_dir / "target_test"

        def build(stale: bool) -> None:
            pool, test = pdata.split_target(self.data_dir / "target", self.cfg)
            pdata._clear(pool_dir, test_dir)
            subset_dataset(self.data_dir / "target", pool, pool_dir, name="target style pool")
            subset_dataset(self.data_dir / "target", test, test_dir, name="target test set")
            write_json(self.run / "split.json", {"style_pool": pool, "test": test})
        self._stage("split", {"data": hash_view(self.cfg.data), "seed": self.cfg.seed}, ["data"],
                    [pool_dir, test_dir, self.run / "split.json"], build)

    def stage_oracle_data(self) -> bool:
        """The source re-imaged with each target protocol; False when the target records no protocol."""
        protocols = pdata.target_protocols(self.data_dir / "target")
        out = self.data_dir / "oracle"
        if not protocols:
            log.warning("oracle arm skipped: the target records no scanner protocol to re-image the source with")
            return False
        self._stage("oracle_data", {"protocols": protocols, "seed": self.cfg.seed}, ["data"], [out],
                    lambda stale: pdata.build_oracle(self.datasets["source"], out, protocols, self.cfg.seed))
        self.datasets["oracle"] = out
        return True

    # -- styles, generators, augmentation -------------------------------------------------------
    def stage_styles(self) -> None:
        out = self.run / "styles"

        def build(stale: bool) -> None:
            from styleseg.style.select import pick_styles

            pdata._clear(out)
            manual = [(s.rpartition(":")[0], int(s.rpartition(":")[2])) for s in self.cfg.style_slices] or None
            pick_styles(self.data_dir / "target_pool", self.cfg.n_styles, out, manual=manual, seed=self.cfg.seed,
                        require_labels=True, config=self.cfg.select)
        self._stage("styles", {"n": self.cfg.n_styles, "manual": list(self.cfg.style_slices),
                               "select": to_dict(self.cfg.select), "seed": self.cfg.seed},
                    ["split"], [out / "styles.json"], build)

    def stage_generators(self, conditional: bool) -> Path:
        name, folder, _, _ = GENERATORS[conditional]
        out = self.run / "generators" / folder
        gcfg = self.cfg.generator_config(conditional=conditional)

        def build(stale: bool) -> None:
            from styleseg.errors import CheckpointMismatch
            from styleseg.style.train import train_generators

            if stale:
                pdata._clear(out)
            try:
                train_generators(self.datasets["source"], self.run / "styles", out, gcfg, resume=True)
            except CheckpointMismatch:  # interrupted under another config: nothing of it can be reused
                log.info("%s: a checkpoint there is from another configuration; training from scratch", out)
                pdata._clear(out)
                train_generators(self.datasets["source"], self.run / "styles", out, gcfg, resume=False)
        self._stage(name, hash_view(gcfg), ["data", "styles"], [out], build)
        return out

    def stage_augment(self, conditional: bool, generators: Path) -> None:
        gen_stage, _, name, dataset = GENERATORS[conditional]
        out = self.data_dir / dataset

        def build(stale: bool) -> None:
            from styleseg.style.augment import augment

            pdata._clear(out)
            augment(self.datasets["source"], generators, out, seed=self.cfg.seed)
        self._stage(name, {"seed": self.cfg.seed}, ["data", gen_stage], [out], build)
        self.datasets[dataset] = out

    def stage_figures(self, generators: Path) -> None:
        """The paper's Fig. 2 (style slices x source label maps -> generated slices) and the contact sheet."""
        figs = self.run / "figures"

        def build(stale: bool) -> None:
            import shutil

            from styleseg.io.dataset import Dataset
            from styleseg.style.augment import style_grid_figure

            figs.mkdir(parents=True, exist_ok=True)
            ds = Dataset(self.datasets["source"])
            labels, sources = [], []
            for rec in ds.labelled_cases()[:3]:
                lab = ds.load_label(rec.case_id).array
                k = int(np.argmax(np.isin(lab, [1, 2]).sum(axis=(1, 2))))  # the slice with most lung
                labels.append(lab[k])
                sources.append(ds.load_image(rec.case_id).array[k].astype(np.float32))
            style_grid_figure(self.run / "styles", generators, labels, figs / "style_grid.png", seed=self.cfg.seed,
                              sources=sources)
            write_text(figs / "style_grid.txt", "Like the paper's Fig. 2: style slices across the top, source "
                       "label maps down the side, generated slices in the grid (W400/L40).")
            sheet = self.run / "styles" / "contact_sheet.png"
            if sheet.exists():
                shutil.copy2(sheet, figs / "style_contact_sheet.png")
                write_text(figs / "style_contact_sheet.txt", "Automatically chosen style slices (k-medoids of "
                           "texture descriptors) with their cluster sizes and scanner/protocol tags.")
        self._stage("figures", {"seed": self.cfg.seed}, ["styles", "generators"], [figs / "style_grid.png"], build)

    # -- arms ----------------------------------------------------------------------------------
    def stage_train_arm(self, arm: Arm) -> Path:
        out = self.run / "arms" / arm.name / "model"
        scfg = self.cfg.seg_config(**arm.seg_changes)
        datasets = [self.datasets[d] for d in arm.train_on]
        transform = TRANSFORMS[arm.transform] if arm.transform else None

        def build(stale: bool) -> None:
            from styleseg.errors import CheckpointMismatch
            from styleseg.seg.train import train_segmentation

            if stale:
                pdata._clear(out)
            extra = transform(self) if transform else None
            try:
                train_segmentation(datasets, out, scfg, resume=(out / "checkpoint.pt").exists(), extra_transform=extra)
            except CheckpointMismatch:  # interrupted under another config: nothing of it can be reused
                log.info("%s: the checkpoint there is from another configuration; training from scratch", out)
                pdata._clear(out)
                train_segmentation(datasets, out, scfg, resume=False, extra_transform=extra)
        self._stage(f"train_{arm.name}", {"seg": hash_view(scfg), "arm": arm.name}, arm.upstream(),
                    [out / "model.json"], build)
        return out

    def predict_options(self) -> dict[str, Any]:
        """bf16 + channels-last inference (oneDNN/AMX on CPU, tensor cores on GPU) for bf16-trained models."""
        bf16 = self.cfg.seg_config().amp == "bf16"
        return {"dtype": "bfloat16" if bf16 else "float32", "channels_last": bf16}

    def stage_predict_arm(self, arm: Arm) -> None:
        pred = self.run / "arms" / arm.name / "pred"
        model = self.run / "arms" / arm.model_arm / "model"

        def build(stale: bool) -> None:
            import hashlib

            from styleseg.seg.segment import segment

            # `--continue` may only reuse outputs of THIS model (an interrupted prediction): outputs of an
            # earlier model (the arm was retrained) are removed first. The model is identified by its weights.
            ident = hashlib.sha1((model / "weights.pt").read_bytes()).hexdigest()
            stamp = pred / ".model_sha1"
            if pred.exists() and (not stamp.exists() or stamp.read_text().strip() != ident):
                pdata._clear(pred)
            pred.mkdir(parents=True, exist_ok=True)
            stamp.write_text(ident + "\n")
            inputs = self.data_dir / "target_test"
            if arm.test_time:
                inputs = self._test_time_inputs(arm)
            segment([inputs], model, pred, continue_=True, **self.predict_options())
        self._stage(f"predict_{arm.name}", {"arm": arm.name}, [f"train_{arm.model_arm}"], [pred], build)

    def _test_time_inputs(self, arm: Arm) -> Path:
        """The test set after the arm's test-time step (e.g. denoised to the source's noise level)."""
        from styleseg.io.dataset import Dataset, DatasetWriter

        assert arm.test_time is not None
        out = self.data_dir / f"target_test_{arm.test_time}"
        pdata._clear(out)
        step = TEST_TIME[arm.test_time](self)
        ds = Dataset(self.data_dir / "target_test")
        record = {k: getattr(step, k) for k in ("method", "strength", "reference_std") if hasattr(step, k)}
        with DatasetWriter(out, f"target test set, {arm.test_time}", ds.schema, meta={arm.test_time: record}) as w:
            for rec in ds:
                img = ds.load_image(rec.case_id)
                w.add_case(rec.case_id, img.with_array(np.stack([step(s.astype(np.float32)) for s in img.array])),
                           None, **rec.extras)
        write_json(self.run / "arms" / arm.name / f"{arm.test_time}.json", record)
        return out

    def stage_evaluate_arm(self, arm: Arm) -> None:
        out = self.run / "arms" / arm.name / "metrics.json"
        ev = self.cfg.evaluate
        assert ev is not None

        def build(stale: bool) -> None:
            from styleseg.eval.evaluate import evaluate

            compare = None if arm.name == "baseline" else self.run / "arms" / "baseline" / "pred"
            evaluate(self.run / "arms" / arm.name / "pred", self.data_dir / "target_test", out=out, compare=compare,
                     n_boot=ev.n_boot, seed=ev.seed, with_hd95=ev.hd95)
        upstream = [f"predict_{arm.name}"] + (["predict_baseline"] if arm.name != "baseline" else [])
        changed = {k: v for k, v in to_dict(ev).items() if to_dict(type(ev)())[k] != v}
        self._stage(f"evaluate_{arm.name}", {"arm": arm.name, **changed}, upstream, [out], build)

    def stage_agreement(self) -> None:
        """Texture robustness without labels: Dice between each arm's predictions on the two scans of a pair."""
        pairs = self.cfg.data.agreement_pairs
        out = self.run / "agreement.json"

        def build(stale: bool) -> None:
            from styleseg.eval.agreement import pair_agreement
            from styleseg.io.dataset import Dataset
            from styleseg.seg.predict import Predictor

            schema = Dataset(self.datasets["source"]).schema
            result: dict[str, Any] = {"pairs": [list(p) for p in pairs], "arms": {}}
            for name in self.cfg.arms:
                arm = ARMS[name]
                model = self.run / "arms" / arm.model_arm / "model"
                if not (model / "model.json").exists():
                    continue
                pred = Predictor(model, **self.predict_options())
                step = TEST_TIME[arm.test_time](self) if arm.test_time else None
                res = pair_agreement(lambda v, p=pred: p.predict_volume(v).array, pairs, schema, step)
                result["arms"][name] = res["mean"]
            write_json(out, result)
        upstream = [f"train_{a}" for a in self.cfg.arms if f"train_{a}" in self.hashes]
        self._stage("agreement", {"pairs": [list(p) for p in pairs]}, upstream, [out], build)

    def stage_report(self) -> Path:
        out = self.run / "report.html"

        def build(stale: bool) -> None:
            from styleseg.eval.report import write_report

            self.write_run_info()
            write_report(self.run, out)
        upstream = [f"evaluate_{a}" for a in self.cfg.arms if f"evaluate_{a}" in self.hashes]
        self._stage("report", {"arms": list(self.cfg.arms)}, upstream, [out], build)
        return out

    # -- everything ----------------------------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        write_text(self.run / "experiment.toml", dump_toml(self.cfg.resolved()))
        arms = [ARMS[a] for a in self.cfg.arms]
        needed = {d for a in arms for d in a.train_on}
        self.stage_data()
        self.stage_split()
        if self.cfg.needs_styles:
            self.stage_styles()
            for conditional in (False, True):
                if GENERATORS[conditional][3] in needed:
                    gens = self.stage_generators(conditional)
                    self.stage_augment(conditional, gens)
                    if not conditional:
                        self.stage_figures(gens)
        if "oracle" in needed and not self.stage_oracle_data():
            self.skipped_arms.update({a.name: "no target protocol recorded to build the oracle" for a in arms
                                      if "oracle" in a.train_on})
        ready = [a for a in arms if a.name not in self.skipped_arms]
        for arm in ready:
            if arm.trains:
                self.stage_train_arm(arm)
                self.stage_predict_arm(arm)
        for arm in ready:
            if not arm.trains:
                self.stage_predict_arm(arm)
        for arm in ready:
            self.stage_evaluate_arm(arm)
        if self.cfg.data.agreement_pairs:
            self.stage_agreement()
        report = self.stage_report()
        return {"report": str(report), "skipped_arms": self.skipped_arms, "timings": self.stages.timings(),
                "all_skipped": all(r.skipped for r in self.stages.results)}


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path,
                   on_event: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run (or continue) an experiment in ``run_dir``; returns paths, timings and skipped arms."""
    run_dir = Path(run_dir)
    prev = run_dir / "experiment.toml"
    if prev.exists():
        old = load_toml(prev)
        if old.get("name") != cfg.name:
            log.info("run folder %s held experiment %r; stages whose config changed will re-run", run_dir,
                     old.get("name"))
    return Experiment(cfg, run_dir, on_event).run_all()


def results_table(run_dir: str | Path, structures: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows (arm, mean Dice per structure, pixel accuracy) from each arm's metrics.json."""
    from styleseg.eval.report.run_info import RunInfo

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
