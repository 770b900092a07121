"""The whole experiment in one run folder: data -> styles -> generators -> augment -> arms -> report.

:func:`run_experiment` runs the stages in order (ARCHITECTURE.md) through a
:class:`~styleseg.pipeline.stages.StageRunner`, which skips a stage whose outputs exist for the same resolved
config and upstream hashes, so ``styleseg run`` on a finished run does nothing and an interrupted run
continues where it stopped (training stages resume from their full-state checkpoints). What each arm does is
data (:mod:`styleseg.pipeline.arms`); this module and :mod:`styleseg.pipeline.arm_stages` only order stages.

Run folder layout (``RUN/run.json`` is the contract with the report, :mod:`styleseg.eval.report.run_info`)::

    RUN/experiment.toml          the resolved configuration
    RUN/run.json                 title, arms, roles, seeds, stage timings, the evaluation dataset (relative)
    RUN/stages/<stage>.json      finished-stage markers (config hash, seconds)
    RUN/data/source, target      the datasets (imported, simulated or built-in benchmark)
    RUN/data/target_pool         target patients reserved for style slices (never tested)
    RUN/data/target_test         the target test set (its labels are in labelsRef: evaluation only)
    RUN/styles/                  the style set (styles.json, slices, label maps, contact sheet)
    RUN/generators/separate/     one generator per style;  RUN/generators/conditional/: one for all
    RUN/data/aug_separate, aug_conditional, oracle, physics   the training datasets of the arms that need them
    RUN/arms/<arm>/model/        segmentation model (+ train_log.jsonl)
    RUN/arms/<arm>/pred/         predictions on the target test set
    RUN/arms/<arm>/metrics.json  metrics (paired comparison against the baseline)
    RUN/arms/<arm>/seed<s>/      the same for every further training seed s
    RUN/seeds.json               per arm over seeds x cases: means with CIs, differences to the reference arm
    RUN/report.html

Generated and randomised training data (generators, augmented and physics datasets) belong to a seed like the
U-Nets trained on them (``_seed<s>`` suffixes for further seeds), so the spread over seeds holds their
randomness too; the data, the split, the style slices and the oracle's data belong to the experiment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.config import dump_toml, hash_view, load_toml, to_dict
from styleseg.io.atomic import write_json, write_text
from styleseg.io.dataset import REIMAGED_FROM
from styleseg.pipeline import data as pdata
from styleseg.pipeline.arm_stages import ArmStages
from styleseg.pipeline.arms import ARMS, TEST_TIME
from styleseg.pipeline.config import ExperimentConfig
from styleseg.pipeline.stages import StageRunner

log = logging.getLogger("styleseg.pipeline")

#: the stage and folder of each kind of generator
GENERATORS = {False: ("generators", "separate", "augment", "aug_separate"),
              True: ("generators_cond", "conditional", "augment_cond", "aug_conditional")}
PHYSICS_VERSIONS = 4


class Experiment(ArmStages):
    """Runs an :class:`ExperimentConfig` in ``run_dir``; each ``stage_*`` method is one stage."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path,
                 on_event: Callable[[str, str], None] | None = None):
        self.cfg = cfg
        self.run = Path(run_dir)
        self.run.mkdir(parents=True, exist_ok=True)
        self.stages = StageRunner(self.run, on_event)
        self.data_dir = self.run / "data"
        self.seeds = cfg.training_seeds
        self.hashes: dict[str, str] = {}
        self.datasets: dict[tuple[str, int], Path] = {("source", s): self.data_dir / "source" for s in self.seeds}
        self.skipped_arms: dict[str, str] = {}
        self.pending = []
        self.submitted: set[tuple[str, int]] = set()

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

        arms = self.cfg.arms
        ref_recipe = self.cfg.reference_arm != "baseline"  # the gap is measured against the oracle of the same recipe
        order = ("oracle_ref", "oracle_ft_ref", "oracle") if ref_recipe else ("oracle", "oracle_ref", "oracle_ft_ref")
        oracle = next((a for a in order if a in arms), None)
        RunInfo(title=self.cfg.name, preset=self.cfg.preset, seeds=list(self.seeds),
                arms=[ArmInfo(a, ARMS[a].title, ARMS[a].role) for a in arms], baseline=self.cfg.reference_arm,
                oracle=oracle,
                reference=self.cfg.reference_arm, target_ref="data/target_test", stages=self.stages.timings(),
                config=self.cfg.resolved()).write(self.run)

    def pool_cases(self) -> list[str]:
        return json.loads((self.run / "split.json").read_text())["style_pool"]

    def _seeded(self, path: Path, seed: int) -> Path:
        """The folder of a seed's generated data: ``path`` for the first seed, ``path_seed<s>`` for the others."""
        return path if seed == self.seeds[0] else path.with_name(f"{path.name}_seed{seed}")

    # -- the ArmContext of transform builders ------------------------------------------------------
    def pool_slices(self) -> list[np.ndarray]:
        return pdata.pool_slices(self.data_dir / "target_pool", self.pool_cases())

    def source_slices(self) -> list[np.ndarray]:
        from styleseg.io.dataset import Dataset

        src = self.data_dir / "source"
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
        self._stage("oracle_data", {"protocols": protocols, "seed": self.cfg.seed, "copy_mark": REIMAGED_FROM},
                    ["data"], [out],
                    lambda stale: pdata.build_oracle(self.data_dir / "source", out, protocols, self.cfg.seed))
        for s in self.seeds:
            self.datasets[("oracle", s)] = out
            if s != self.seeds[0]:
                self.hashes[self.stage_name("oracle_data", s)] = self.hashes["oracle_data"]
        return True

    def stage_physics_data(self, seed: int) -> None:
        out = self._seeded(self.data_dir / "physics", seed)
        self._stage(self.stage_name("physics_data", seed),
                    {"versions": PHYSICS_VERSIONS, "seed": seed, "copy_mark": REIMAGED_FROM}, ["data"], [out],
                    lambda stale: pdata.build_physics(self.data_dir / "source", out, PHYSICS_VERSIONS, seed))
        self.datasets[("physics", seed)] = out

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

    def stage_generators(self, conditional: bool, seed: int) -> Path:
        name, folder, _, _ = GENERATORS[conditional]
        out = self._seeded(self.run / "generators" / folder, seed)
        gcfg = self.cfg.generator_config(conditional=conditional, seed=seed)

        def build(stale: bool) -> None:
            from styleseg.errors import CheckpointMismatch
            from styleseg.style.train import train_generators

            if stale:
                pdata._clear(out)
            try:
                train_generators(self.data_dir / "source", self.run / "styles", out, gcfg, resume=True)
            except CheckpointMismatch:  # interrupted under another config: nothing of it can be reused
                log.info("%s: a checkpoint there is from another configuration; training from scratch", out)
                pdata._clear(out)
                train_generators(self.data_dir / "source", self.run / "styles", out, gcfg, resume=False)
        self._stage(self.stage_name(name, seed), hash_view(gcfg), ["data", "styles"], [out], build)
        return out

    def stage_augment(self, conditional: bool, generators: Path, seed: int) -> None:
        gen_stage, _, name, dataset = GENERATORS[conditional]
        out = self._seeded(self.data_dir / dataset, seed)

        def build(stale: bool) -> None:
            from styleseg.style.augment import augment

            pdata._clear(out)
            augment(self.data_dir / "source", generators, out, seed=seed)
        self._stage(self.stage_name(name, seed), {"seed": seed}, ["data", self.stage_name(gen_stage, seed)], [out],
                    build)
        self.datasets[(dataset, seed)] = out

    def stage_figures(self, generators: Path) -> None:
        """The paper's Fig. 2 (style slices x source label maps -> generated slices) and the contact sheet."""
        figs = self.run / "figures"

        def build(stale: bool) -> None:
            import shutil

            from styleseg.io.dataset import Dataset
            from styleseg.style.figures import style_grid_figure

            figs.mkdir(parents=True, exist_ok=True)
            ds = Dataset(self.data_dir / "source")
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

    # -- across arms and seeds --------------------------------------------------------------------
    def stage_agreement(self) -> None:
        """Texture robustness without labels: Dice between each arm's predictions on the two scans of a pair, per
        seed (``arms``: the first seed, ``seeds``: every seed, ``per_seed``: per pair, with where a structure was
        found in neither scan) and over seeds (``summary``: means with CIs over seeds x pairs and each arm's paired
        difference to the reference arm, :func:`~styleseg.eval.agreement.summarise_agreement`)."""
        pairs = self.cfg.data.agreement_pairs
        out = self.run / "agreement.json"

        def build(stale: bool) -> None:
            from styleseg.eval.agreement import pair_agreement, summarise_agreement
            from styleseg.io.dataset import Dataset
            from styleseg.seg.predict import Predictor

            schema = Dataset(self.data_dir / "source").schema
            result: dict[str, Any] = {"pairs": [list(p) for p in pairs], "arms": {}, "seeds": {}}
            per_seed: dict[str, dict[str, Any]] = {}
            for name in self.cfg.arms:
                arm = ARMS[name]
                step = TEST_TIME[arm.test_time](self) if arm.test_time else None
                for seed in self.seeds:
                    model = self.arm_dir(arm.model_arm, seed) / "model"
                    if not (model / "model.json").exists():
                        continue
                    pred = Predictor(model, **self.predict_options())
                    res = pair_agreement(lambda v, p=pred: p.predict_volume(v).array, pairs, schema, step)
                    result["seeds"].setdefault(name, {})[str(seed)] = res["mean"]
                    per_seed.setdefault(name, {})[str(seed)] = {"per_pair": res["per_pair"], "absent": res["absent"]}
                    if seed == self.seeds[0]:
                        result["arms"][name] = res["mean"]
            result["per_seed"] = per_seed
            ev = self.cfg.evaluate
            result["summary"] = summarise_agreement(per_seed, self.cfg.reference_arm, ev.n_boot, ev.seed)
            write_json(out, result)
        upstream = [s for s in self.hashes if s.startswith("train_")]
        self._stage("agreement", {"pairs": [list(p) for p in pairs], "seeds": list(self.seeds), "summary": 2,
                                  "reference": self.cfg.reference_arm, "n_boot": self.cfg.evaluate.n_boot},
                    sorted(upstream), [out], build)

    def stage_seed_summary(self) -> None:
        """Per arm over seeds x cases: means with 95% CIs and the paired difference to the reference arm."""
        from styleseg.eval.seeds import compare_seeds, convergence, summarise_seeds

        out = self.run / "seeds.json"
        ev = self.cfg.evaluate
        ref = self.cfg.reference_arm

        def per_seed(name: str) -> list[dict]:
            return [json.loads((self.arm_dir(name, s) / "metrics.json").read_text()) for s in self.seeds
                    if (self.arm_dir(name, s) / "metrics.json").exists()]

        def build(stale: bool) -> None:
            from styleseg.eval.report.run_folder import read_jsonl

            arms: dict[str, Any] = {}
            ref_metrics = per_seed(ref)
            for name in self.cfg.arms:
                ms = per_seed(name)
                if not ms:
                    continue
                structures = list(ms[0]["mean"])
                entry: dict[str, Any] = {"seeds": len(ms), "mean": summarise_seeds(ms, structures, ev.n_boot, ev.seed)}
                if name != ref and ref_metrics:
                    entry["vs_reference"] = compare_seeds(ms, ref_metrics, structures, ev.n_boot, ev.seed)
                logs = [self.arm_dir(ARMS[name].model_arm, s) / "model" / "train_log.jsonl" for s in self.seeds]
                entry["convergence"] = [convergence(read_jsonl(p)[0]) for p in logs if p.exists()]
                arms[name] = entry
            write_json(out, {"seeds": list(self.seeds), "reference": ref, "arms": arms})
        upstream = sorted(s for s in self.hashes if s.startswith("evaluate_"))
        self._stage("seed_summary", {"seeds": list(self.seeds), "reference": ref, "n_boot": ev.n_boot}, upstream,
                    [out], build)

    def stage_report(self) -> Path:
        out = self.run / "report.html"

        def build(stale: bool) -> None:
            from styleseg.eval.report import write_report

            self.write_run_info()
            write_report(self.run, out)
        upstream = sorted(s for s in self.hashes if s.startswith(("evaluate_", "seed_summary")))
        self._stage("report", {"arms": list(self.cfg.arms), "seeds": list(self.seeds)}, upstream, [out], build)
        return out

    # -- everything ----------------------------------------------------------------------------
    def _training_data(self, needed: set[str], seed_ready: Callable[[int], None]) -> None:
        """The generated and re-imaged training data, seed by seed; ``seed_ready(seed)`` when a seed's is built."""
        if self.cfg.needs_styles:
            self.stage_styles()
        for seed in self.seeds:
            for conditional in (False, True):
                if GENERATORS[conditional][3] in needed:
                    self.share_cpus()
                    gens = self.stage_generators(conditional, seed)
                    self.share_cpus()
                    self.stage_augment(conditional, gens, seed)
                    if not conditional and seed == self.seeds[0]:
                        self.stage_figures(gens)
            if "physics" in needed:
                self.share_cpus()
                self.stage_physics_data(seed)
            seed_ready(seed)

    def run_all(self) -> dict[str, Any]:
        write_text(self.run / "experiment.toml", dump_toml(self.cfg.resolved()))
        arms = [ARMS[a] for a in self.cfg.arms]
        needed = {d for a in arms for d in a.train_on}
        self.stage_data()
        self.stage_split()
        self.open_pool()
        ok = False
        try:
            # with workers, an arm's U-Net is queued as soon as its seed's training data exists: the source-only
            # arms now, the oracle's after its re-imaging, the others seed by seed beside the generators, the
            # augmentation and the re-imaging of the next seeds
            early = [a for a in arms if set(a.train_on) <= {"source"}] if self.pool is not None else []
            self.submit_trainings(early)
            with self.threads_beside_workers():
                if "oracle" in needed and not self.stage_oracle_data():
                    self.skipped_arms.update({a.name: "no target protocol recorded to build the oracle"
                                              for a in arms if "oracle" in a.train_on})
                self.submit_ready(arms)
                self._training_data(needed, lambda seed: self.submit_ready(arms, seed))
            ready = [a for a in arms if a.name not in self.skipped_arms]
            self.submit_trainings(ready)
            self.finish_trainings(ready)
            ok = True
        finally:
            self.close_pool(ok)
        for seed in self.seeds:
            for arm in ready:
                self.stage_predict_arm(arm, seed)
            for arm in ready:
                self.stage_evaluate_arm(arm, seed)
        if self.cfg.data.agreement_pairs:
            self.stage_agreement()
        if len(self.seeds) > 1:
            self.stage_seed_summary()
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
