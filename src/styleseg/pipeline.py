"""The whole experiment in one run folder: data -> styles -> generators -> augment -> arms -> report.

``run_experiment(cfg, run_dir)`` runs the stages in order (ARCHITECTURE.md) through a
:class:`~styleseg.stages.StageRunner`, which skips a stage whose outputs exist for the same resolved
config and upstream hashes, so ``styleseg run`` on a finished run does nothing and an interrupted run
continues where it stopped (training stages resume from their full-state checkpoints).

Run folder layout (what :mod:`styleseg.eval.report` reads)::

    RUN/experiment.toml          the resolved configuration
    RUN/run.json                 title, stage timings, arms, paths
    RUN/stages/<stage>.json      finished-stage markers (config hash, seconds)
    RUN/data/source, target      the datasets (imported, simulated or built-in benchmark)
    RUN/data/target_pool         target patients reserved for style slices (never tested)
    RUN/data/target_test         the target test set (its labels are in labelsRef: evaluation only)
    RUN/styles/                  the style set (styles.json, slices, label maps, contact sheet)
    RUN/generators/separate/     one generator per style;  RUN/generators/conditional/: one for all
    RUN/data/aug_separate, aug_conditional   the m x (n+1) augmented datasets
    RUN/arms/<arm>/model/        segmentation model (+ train_log.jsonl)
    RUN/arms/<arm>/pred/         predictions on the target test set
    RUN/arms/<arm>/metrics.json  metrics (paired comparison against the baseline)
    RUN/report.html
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.config import check_preset, dump_toml, from_dict, hash_view, load_toml, to_dict
from styleseg.errors import ConfigError, InputError
from styleseg.io.atomic import write_json, write_text
from styleseg.stages import StageRunner

log = logging.getLogger("styleseg.pipeline")

#: every arm of issue 6, plus the position-channel U-Net (session 5), in report order
ALL_ARMS = ("baseline", "intensity", "histmatch", "fda", "styleseg", "styleseg_cond", "oracle", "denoise",
            "lowres", "position")
ARM_TITLES = {
    "baseline": "U-Net 1: source only (baseline)",
    "intensity": "intensity augmentation (nnU-Net-like)",
    "histmatch": "histogram matching to target",
    "fda": "Fourier domain adaptation",
    "styleseg": "U-Net 2: styleseg, n separate generators",
    "styleseg_cond": "styleseg, one conditional generator",
    "oracle": "oracle: source anatomy with true target texture",
    "denoise": "denoise target, then baseline",
    "lowres": "low resolution (4x downsampled)",
    "position": "source only, U-Net with position channels",
}


@dataclass(frozen=True)
class DataConfig:
    """Where source and target data come from, and how the target is split.

    Exactly one source: ``benchmark = true`` (the built-in phantom benchmark), ``source`` (paths to
    import: DICOM trees, NIfTI pairs) or ``source_dataset`` (an existing dataset folder). The target
    likewise (``benchmark``, ``target`` or ``target_dataset``); ``target_protocols`` re-images the target
    with those scanner protocols (the real-CT experiment) and keeps its labels for evaluation only.
    """

    benchmark: bool = False
    source: tuple[str, ...] = ()
    source_dataset: str | None = None
    source_cases: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    target_dataset: str | None = None
    target_cases: tuple[str, ...] = ()
    target_protocols: tuple[str, ...] = ()
    cases_json: str | None = None
    style_pool_fraction: float = 0.3
    style_pool: tuple[str, ...] = ()
    max_test_cases: int = 0
    #: unlabelled same-scan pairs (e.g. sharp and standard kernel reconstructions): each arm segments
    #: both and reports their agreement (Dice between the two predictions per structure)
    agreement_pairs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        n_src = int(self.benchmark) + int(bool(self.source)) + int(self.source_dataset is not None)
        if n_src != 1:
            raise ConfigError("[data]: give exactly one of benchmark = true, source = [...], source_dataset = '...'")
        n_tgt = int(self.benchmark) + int(bool(self.target)) + int(self.target_dataset is not None)
        if n_tgt != 1:
            raise ConfigError("[data]: give exactly one of benchmark = true, target = [...], target_dataset = '...'")
        if not 0.0 < self.style_pool_fraction < 1.0:
            raise ConfigError("[data].style_pool_fraction must be in (0, 1)")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data, arms and the per-stage settings (each a preset plus overrides)."""

    name: str = "experiment"
    preset: str = "quick"
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(benchmark=True))
    arms: tuple[str, ...] = ALL_ARMS
    n_styles: int = 4
    style_slices: tuple[str, ...] = ()  # manual "CASE:SLICE" list instead of automatic selection
    benchmark: dict[str, Any] = field(default_factory=dict)
    select: dict[str, Any] = field(default_factory=dict)
    generators: dict[str, Any] = field(default_factory=dict)
    train_seg: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_preset(self.preset)
        bad = [a for a in self.arms if a not in ALL_ARMS]
        if bad:
            import difflib

            hints = [f"{b!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(b, ALL_ARMS, 1))
                                 else "") for b in bad]
            raise ConfigError(f"arms: unknown arm {', '.join(hints)}; choose from {', '.join(ALL_ARMS)}")
        if "baseline" not in self.arms:
            raise ConfigError("arms: 'baseline' is required (every arm is compared against it)")
        if self.n_styles < 1:
            raise ConfigError("n_styles must be >= 1")

    # --- the resolved per-stage configs --------------------------------------------------------------
    def seg_config(self, **changes: Any):
        from styleseg.seg.train import SegTrainConfig

        base = to_dict(SegTrainConfig.preset(self.preset))
        cfg = from_dict(SegTrainConfig, {**base, **self.train_seg, "seed": self.seed}, "[train_seg]")
        return replace(cfg, **changes) if changes else cfg

    def generator_config(self, **changes: Any):
        from styleseg.style.train import GeneratorConfig

        base = to_dict(GeneratorConfig.preset(self.preset))
        cfg = from_dict(GeneratorConfig, {**base, **self.generators, "seed": self.seed}, "[generators]")
        return replace(cfg, **changes) if changes else cfg

    def select_config(self):
        from styleseg.style.select import SelectConfig

        base = to_dict(SelectConfig.preset(self.preset))
        return from_dict(SelectConfig, {**base, **self.select}, "[select]")

    def resolved(self) -> dict[str, Any]:
        """Everything, with presets expanded (what ``--dry-run`` prints and the run folder keeps)."""
        d = to_dict(self)
        d["train_seg"] = to_dict(self.seg_config())
        if {"styleseg", "styleseg_cond"} & set(self.arms):
            d["generators"] = to_dict(self.generator_config())
            d["select"] = to_dict(self.select_config())
        return d


def load_experiment(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read EXPERIMENT.toml (relative data paths are taken relative to the file)."""
    path = Path(path)
    raw = load_toml(path)
    raw.update(dict(overrides or {}))
    data = dict(raw.get("data", {}))
    for key in ("source", "target"):
        if key in data:
            data[key] = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in data[key]]
    if "agreement_pairs" in data:
        data["agreement_pairs"] = [[str(p if Path(p).is_absolute() else (path.parent / p).resolve()) for p in pair]
                                   for pair in data["agreement_pairs"]]
    for key in ("source_dataset", "target_dataset", "cases_json"):
        if data.get(key):
            p = Path(data[key])
            data[key] = str(p if p.is_absolute() else (path.parent / p).resolve())
    if data:
        raw["data"] = data
    cfg = from_dict(ExperimentConfig, raw, str(path))
    cfg.resolved()  # build every stage config now, so a typo in any section fails before any work
    return cfg


def demo_config(preset: str = "quick", arms: tuple[str, ...] | None = None) -> ExperimentConfig:
    """The built-in demo: the phantom benchmark and every arm, sized for 2 CPU cores."""
    small = preset == "quick"
    return ExperimentConfig(
        name="styleseg demo (phantom benchmark)", preset=preset, data=DataConfig(benchmark=True),
        arms=arms or ALL_ARMS, n_styles=3 if small else 6,
        # the quick demo trains 7 U-Nets and 4 generators on 2 CPU cores within ~15 minutes, so each
        # network gets a short budget; BENCHMARKS.md has the longer runs
        generators=DEMO_GENERATORS if small else {},
        train_seg=DEMO_TRAIN_SEG if small else {},
    )


#: demo sizes for the quick preset (2 CPU cores, <= 15 minutes for the whole experiment)
DEMO_GENERATORS: dict[str, Any] = {"steps": 60}
DEMO_TRAIN_SEG: dict[str, Any] = {"epochs": 6, "steps_per_epoch": 25, "crop": 192, "batch_size": 8, "amp": "bf16"}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def patient_of(rec: Any) -> str:
    """The patient a case belongs to (benchmark/simulated cases record it; else the case id)."""
    ex = rec.extras
    for key in ("patient", "source_case"):
        if ex.get(key):
            return str(ex[key])
    prov = ex.get("provenance")
    if isinstance(prov, Mapping) and prov.get("source_case"):
        return str(prov["source_case"])
    return rec.case_id


def split_target(target: Path, cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """Split target cases by patient into a style pool and a test set (seeded, recorded)."""
    from styleseg.io.dataset import Dataset

    ds = Dataset(target)
    patients = sorted({patient_of(r) for r in ds})
    if len(patients) < 2:
        raise InputError(target, f"the target has {len(patients)} patient(s); need >= 2 (style pool + test set)")
    if cfg.data.style_pool:
        pool = [p for p in patients if p in set(cfg.data.style_pool)]
        if not pool:
            raise ConfigError(f"[data].style_pool: none of {list(cfg.data.style_pool)} is a target patient "
                              f"({', '.join(patients[:10])}...)")
    else:
        rng = np.random.default_rng(cfg.seed)
        k = max(1, min(len(patients) - 1, int(round(cfg.data.style_pool_fraction * len(patients)))))
        pool = sorted(rng.choice(patients, size=k, replace=False).tolist())
    pool_cases = [r.case_id for r in ds if patient_of(r) in set(pool)]
    test_cases = [r.case_id for r in ds if patient_of(r) not in set(pool)]
    if cfg.data.max_test_cases:
        test_cases = test_cases[: cfg.data.max_test_cases]
    return pool_cases, test_cases


def target_protocols(target: Path) -> list[str]:
    """Names of the scanner protocols the target cases were imaged with (if recorded)."""
    from styleseg.io.dataset import Dataset

    names = []
    for r in Dataset(target):
        p = r.extras.get("protocol")
        name = p.get("name") if isinstance(p, Mapping) else p
        if name and name not in names:
            names.append(str(name))
    return names


def pool_slices(dataset: Path, cases: list[str], per_case: int = 4) -> list[np.ndarray]:
    """A few central HU slices of each pool case (unlabelled target texture for histmatch / FDA)."""
    from styleseg.io.dataset import Dataset

    ds = Dataset(dataset)
    out = []
    for cid in cases:
        arr = ds.load_image(cid).array
        z = arr.shape[0]
        idx = np.unique(np.linspace(z * 0.25, z * 0.75, per_case).astype(int).clip(0, z - 1))
        out.extend(arr[i].astype(np.float32) for i in idx)
    return out


# ------------------------------------------------------------------------------------------------
# the experiment
# ------------------------------------------------------------------------------------------------
class Experiment:
    """Runs an :class:`ExperimentConfig` in ``run_dir``; each ``stage_*`` method is one stage."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path,
                 on_event: Callable[[str, str], None] | None = None):
        self.cfg = cfg
        self.run = Path(run_dir)
        self.run.mkdir(parents=True, exist_ok=True)
        self.stages = StageRunner(self.run, on_event)
        self.d = self.run / "data"
        self.hashes: dict[str, str] = {}
        self.fresh = False
        self.t0 = time.time()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _stage(self, name: str, cfg: Any, upstream: list[str], outputs: list[Path], fn: Callable[[], Any]) -> None:
        # a finished marker with another hash means the config or an upstream stage changed: training
        # stages then start over instead of resuming (a missing marker means interrupted: resume)
        self.fresh = self.stages.marker(name).exists()
        res = self.stages.run(name, cfg, [self.hashes[u] for u in upstream], outputs, fn)
        self.hashes[name] = res.hash
        self._write_run_json()

    def _write_run_json(self) -> None:
        write_json(self.run / "run.json", {
            "title": self.cfg.name, "preset": self.cfg.preset, "seed": self.cfg.seed,
            "arms": list(self.cfg.arms), "arm_titles": {a: ARM_TITLES[a] for a in self.cfg.arms},
            "baseline": "baseline", "oracle": "oracle" if "oracle" in self.cfg.arms else None,
            "target_ref": str(self.d / "target_test"), "stages": self.stages.timings(),
            "config": self.cfg.resolved(),
        })

    @property
    def needs_styles(self) -> bool:
        return bool({"styleseg", "styleseg_cond"} & set(self.cfg.arms))

    # -- stages --------------------------------------------------------------------------------
    def stage_data(self) -> None:
        c = self.cfg.data
        src, tgt = self.d / "source", self.d / "target"
        if c.benchmark:
            def build() -> None:
                import os
                import shutil

                from styleseg.sim.benchmark import BenchmarkConfig, make_benchmark

                for p in (src, tgt, self.d / "benchmark"):
                    if p.exists():
                        shutil.rmtree(p)
                preset = self.cfg.benchmark.get("preset", self.cfg.preset)
                kw = {k: v for k, v in self.cfg.benchmark.items() if k != "preset"}
                config = from_dict(BenchmarkConfig, {**to_dict(BenchmarkConfig.preset(preset)), **kw}, "[benchmark]")
                s, t = make_benchmark(self.d / "benchmark", preset=preset, seed=self.cfg.seed, config=config)
                os.replace(s, src)
                os.replace(t, tgt)
                shutil.rmtree(self.d / "benchmark")
            self._stage("data", {"benchmark": self.cfg.benchmark, "preset": self.cfg.preset, "seed": self.cfg.seed},
                        [], [src, tgt], build)
            return

        def build_real() -> None:
            self._import_side(c.source, c.source_dataset, c.source_cases, src)
            if c.target_protocols:
                self._simulated_target(tgt)
            else:
                self._import_side(c.target, c.target_dataset, c.target_cases, tgt)
        self._stage("data", hash_view(c) | {"seed": self.cfg.seed}, [], [src, tgt], build_real)

    def _import_side(self, paths: tuple[str, ...], dataset: str | None, cases: tuple[str, ...], out: Path) -> None:
        import shutil

        from styleseg.io.dataset import Dataset, subset_dataset

        if out.exists():
            shutil.rmtree(out)
        if dataset is not None:
            ds = Dataset(dataset)
            subset_dataset(dataset, list(cases) or [r.case_id for r in ds], out)
            return
        from styleseg.io.importer import import_sources

        tmp = out.with_name(out.name + ".import")
        if tmp.exists():
            shutil.rmtree(tmp)
        import_sources([Path(p) for p in paths], tmp, cases_json=Path(self.cfg.data.cases_json)
                       if self.cfg.data.cases_json else None)
        ds = Dataset(tmp)
        subset_dataset(tmp, list(cases) or [r.case_id for r in ds], out)
        shutil.rmtree(tmp)

    def _simulated_target(self, out: Path) -> None:
        """Import the target cases, then re-image each with every protocol; labels -> labelsRef."""
        import shutil

        from styleseg.io.dataset import Dataset, DatasetWriter
        from styleseg.sim.scanner import get_protocol, reimage

        c = self.cfg.data
        base = out.with_name("target_clean")
        self._import_side(c.target, c.target_dataset, c.target_cases, base)
        ds = Dataset(base)
        rng = np.random.default_rng(self.cfg.seed + 1)
        if out.exists():
            shutil.rmtree(out)
        with DatasetWriter(out, "target (re-imaged)", ds.schema, meta={"protocols": list(c.target_protocols)}) as w:
            for rec in ds:
                img = ds.load_image(rec.case_id)
                lab = ds.load_label(rec.case_id, image=img)
                for pname in c.target_protocols:
                    prot = get_protocol(pname)
                    hu = reimage(img.array.astype(np.float32), img.spacing[0], prot, rng, noise_free_input=False)
                    w.add_case(f"{rec.case_id}_{pname}", img.with_array(hu), lab, annotated=rec.annotated,
                               derived=rec.derived, label_role="labelsRef", patient=rec.case_id,
                               protocol=prot.to_json(), scanner=rec.extras.get("scanner", {}))
        shutil.rmtree(base)

    def stage_split(self) -> None:
        from styleseg.io.dataset import subset_dataset

        pool_dir, test_dir = self.d / "target_pool", self.d / "target_test"

        def build() -> None:
            import shutil

            pool, test = split_target(self.d / "target", self.cfg)
            for p in (pool_dir, test_dir):
                if p.exists():
                    shutil.rmtree(p)
            subset_dataset(self.d / "target", pool, pool_dir, name="target style pool")
            subset_dataset(self.d / "target", test, test_dir, name="target test set")
            write_json(self.run / "split.json", {"style_pool": pool, "test": test})
        self._stage("split", {"data": hash_view(self.cfg.data), "seed": self.cfg.seed}, ["data"],
                    [pool_dir, test_dir, self.run / "split.json"], build)

    def stage_styles(self) -> None:
        out = self.run / "styles"

        def build() -> None:
            import shutil

            from styleseg.style.select import pick_styles

            if out.exists():
                shutil.rmtree(out)
            manual = [(s.split(":")[0], int(s.split(":")[1])) for s in self.cfg.style_slices] or None
            pick_styles(self.d / "target_pool", self.cfg.n_styles, out, manual=manual, seed=self.cfg.seed,
                        require_labels=True, config=self.cfg.select_config())
        self._stage("styles", {"n": self.cfg.n_styles, "manual": list(self.cfg.style_slices),
                               "select": to_dict(self.cfg.select_config()), "seed": self.cfg.seed},
                    ["split"], [out / "styles.json"], build)

    def stage_generators(self, conditional: bool) -> Path:
        name = "generators_cond" if conditional else "generators"
        out = self.run / "generators" / ("conditional" if conditional else "separate")
        gcfg = self.cfg.generator_config(conditional=conditional)

        def build() -> None:
            import shutil

            from styleseg.style.train import train_generators

            if self.fresh and out.exists():
                shutil.rmtree(out)
            train_generators(self.d / "source", self.run / "styles", out, gcfg, resume=True)
        self._stage(name, hash_view(gcfg), ["data", "styles"], [out], build)
        return out

    def stage_augment(self, conditional: bool, generators: Path) -> Path:
        name = "augment_cond" if conditional else "augment"
        out = self.d / ("aug_conditional" if conditional else "aug_separate")

        def build() -> None:
            import shutil

            from styleseg.style.augment import augment

            if out.exists():
                shutil.rmtree(out)
            augment(self.d / "source", generators, out, seed=self.cfg.seed)
        self._stage(name, {"seed": self.cfg.seed}, ["data", "generators_cond" if conditional else "generators"],
                    [out], build)
        return out

    def stage_figures(self, generators: Path) -> None:
        """The paper's Fig. 2 (style slices x source label maps -> generated slices) and the contact sheet."""
        figs = self.run / "figures"

        def build() -> None:
            import shutil

            from styleseg.io.dataset import Dataset
            from styleseg.style.augment import style_grid_figure

            figs.mkdir(parents=True, exist_ok=True)
            ds = Dataset(self.d / "source")
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

    def stage_oracle_data(self) -> Path | None:
        """The source re-imaged with each target protocol: true target texture on source anatomy."""
        protocols = target_protocols(self.d / "target")
        out = self.d / "oracle"
        if not protocols:
            log.warning("oracle arm skipped: the target records no scanner protocol to re-image the source with")
            return None

        def build() -> None:
            import shutil

            from styleseg.io.dataset import Dataset, DatasetWriter
            from styleseg.sim.scanner import get_protocol, reimage

            ds = Dataset(self.d / "source")
            rng = np.random.default_rng(self.cfg.seed + 2)
            if out.exists():
                shutil.rmtree(out)
            with DatasetWriter(out, "oracle: source re-imaged with the target protocols", ds.schema,
                               meta={"protocols": protocols}) as w:
                for rec in ds.labelled_cases():
                    img = ds.load_image(rec.case_id)
                    lab = ds.load_label(rec.case_id, image=img)
                    w.add_case(rec.case_id, img, lab, annotated=rec.annotated, derived=rec.derived,
                               patient=patient_of(rec))
                    for pname in protocols:
                        hu = reimage(img.array.astype(np.float32), img.spacing[0], get_protocol(pname), rng,
                                     noise_free_input=False)
                        w.add_case(f"{rec.case_id}_{pname}", img.with_array(hu), lab, annotated=rec.annotated,
                                   derived=rec.derived, patient=patient_of(rec), protocol=pname)
        self._stage("oracle_data", {"protocols": protocols, "seed": self.cfg.seed}, ["data"], [out], build)
        return out

    def arm_datasets(self, arm: str, aug: dict[str, Path], oracle: Path | None) -> list[Path] | None:
        src = self.d / "source"
        if arm in ("baseline", "intensity", "histmatch", "fda", "lowres", "position"):
            return [src]
        if arm == "styleseg":
            return [aug["separate"]]
        if arm == "styleseg_cond":
            return [aug["conditional"]]
        if arm == "oracle":
            return None if oracle is None else [oracle]
        raise ValueError(arm)

    def arm_transform(self, arm: str):
        from styleseg.data import arms as A

        if arm == "intensity":
            return A.IntensityAugment()
        pool = self._pool_cases()
        if arm == "histmatch":
            return A.HistogramMatch(pool_slices(self.d / "target_pool", pool))
        if arm == "fda":
            return A.FDA(pool_slices(self.d / "target_pool", pool))
        return None

    def _pool_cases(self) -> list[str]:
        return json.loads((self.run / "split.json").read_text())["style_pool"]

    def stage_train_arm(self, arm: str, datasets: list[Path], upstream: list[str]) -> Path:
        out = self.run / "arms" / arm / "model"
        changes = {"lowres": {"downsample": 4}, "position": {"position": True}}.get(arm, {})
        scfg = self.cfg.seg_config(**changes)

        def build() -> None:
            import shutil

            from styleseg.errors import CheckpointMismatch
            from styleseg.seg.train import train_segmentation

            if self.fresh and out.exists():
                shutil.rmtree(out)
            try:
                train_segmentation(datasets, out, scfg, resume=(out / "checkpoint.pt").exists(),
                                   extra_transform=self.arm_transform(arm))
            except CheckpointMismatch:  # interrupted under another config: nothing of it can be reused
                log.info("%s: the checkpoint there is from another configuration; training from scratch", out)
                shutil.rmtree(out)
                train_segmentation(datasets, out, scfg, resume=False, extra_transform=self.arm_transform(arm))
        self._stage(f"train_{arm}", {"seg": hash_view(scfg), "arm": arm}, upstream, [out / "model.json"], build)
        return out

    def stage_predict_arm(self, arm: str, model: Path, upstream: list[str]) -> Path:
        pred = self.run / "arms" / arm / "pred"
        test = self.d / "target_test"

        def build() -> None:
            import hashlib
            import shutil

            from styleseg.seg.predict import segment

            # `--continue` may only reuse outputs of THIS model (an interrupted prediction): outputs of an
            # earlier model (the arm was retrained) are removed first. The model is identified by its weights.
            ident = hashlib.sha1((model / "weights.pt").read_bytes()).hexdigest()
            stamp = pred / ".model_sha1"
            if pred.exists() and (not stamp.exists() or stamp.read_text().strip() != ident):
                shutil.rmtree(pred)
            pred.mkdir(parents=True, exist_ok=True)
            stamp.write_text(ident + "\n")
            inputs = test
            if arm == "denoise":
                inputs = self._denoised_test()
            segment([inputs], model, pred, continue_=True, **self._predict_options())
        self._stage(f"predict_{arm}", {"arm": arm}, upstream, [pred], build)
        return pred

    def _predict_options(self) -> dict[str, Any]:
        """bf16 + channels-last inference (oneDNN/AMX on CPU, tensor cores on GPU) for bf16-trained models."""
        bf16 = self.cfg.seg_config().amp == "bf16"
        return {"dtype": "bfloat16" if bf16 else "float32", "channels_last": bf16}

    def _denoiser(self):
        """Denoiser tuned on style-pool slices to bring them to the source's soft-tissue noise level."""
        from styleseg.data.arms import tune_denoiser
        from styleseg.io.dataset import Dataset

        noisy = pool_slices(self.d / "target_pool", self._pool_cases())
        clean = pool_slices(self.d / "source", [r.case_id for r in Dataset(self.d / "source")][:4])
        return tune_denoiser(noisy, clean)

    def _denoised_test(self) -> Path:
        """The test set denoised with a strength tuned on style-pool slices to the source noise level."""
        import shutil

        from styleseg.io.dataset import Dataset, DatasetWriter

        out = self.d / "target_test_denoised"
        if out.exists():
            shutil.rmtree(out)
        den = self._denoiser()
        ds = Dataset(self.d / "target_test")
        with DatasetWriter(out, "target test set, denoised", ds.schema,
                           meta={"denoise": {"method": den.method, "strength": den.strength}}) as w:
            for rec in ds:
                img = ds.load_image(rec.case_id)
                hu = np.stack([den(s.astype(np.float32)) for s in img.array])
                w.add_case(rec.case_id, img.with_array(hu), None, **rec.extras)
        write_json(self.run / "arms" / "denoise" / "denoiser.json",
                   {"method": den.method, "strength": den.strength, "reference_std": den.reference_std})
        return out

    def stage_evaluate_arm(self, arm: str, upstream: list[str]) -> None:
        out = self.run / "arms" / arm / "metrics.json"

        def build() -> None:
            from styleseg.eval.evaluate import evaluate

            compare = None if arm == "baseline" else self.run / "arms" / "baseline" / "pred"
            evaluate(self.run / "arms" / arm / "pred", self.d / "target_test", out=out, compare=compare)
        self._stage(f"evaluate_{arm}", {"arm": arm, **self.cfg.evaluate}, upstream, [out], build)

    def stage_agreement(self) -> None:
        """Texture robustness without labels: Dice between each arm's predictions on the two scans of a pair."""
        pairs = self.cfg.data.agreement_pairs
        out = self.run / "agreement.json"

        def build() -> None:
            from styleseg.eval.metrics import dice
            from styleseg.io.dataset import Dataset
            from styleseg.io.volume import read_nifti
            from styleseg.seg.predict import Predictor

            schema = Dataset(self.d / "source").schema
            result: dict[str, Any] = {"pairs": [list(p) for p in pairs], "arms": {}}
            for arm in self.cfg.arms:
                model = self.run / "arms" / ("baseline" if arm == "denoise" else arm) / "model"
                if not (model / "model.json").exists():
                    continue
                pred = Predictor(model, **self._predict_options())
                den = self._denoiser() if arm == "denoise" else None
                per_pair = []
                for a, b in pairs:
                    labs = []
                    for path in (a, b):
                        vol = read_nifti(path)
                        if den is not None:
                            vol = vol.with_array(np.stack([den(s.astype(np.float32)) for s in vol.array]))
                        labs.append(pred.predict_volume(vol).array)
                    per_pair.append({n: dice(labs[0] == v, labs[1] == v) for n, v in schema.structures})
                result["arms"][arm] = {n: float(np.mean([pp[n] for pp in per_pair])) for n, _ in schema.structures}
            write_json(out, result)
        upstream = [f"train_{a}" for a in self.cfg.arms if f"train_{a}" in self.hashes]
        self._stage("agreement", {"pairs": [list(p) for p in pairs]}, upstream, [out], build)

    def stage_report(self) -> Path:
        out = self.run / "report.html"

        def build() -> None:
            from styleseg.eval.report import write_report

            self._write_run_json()
            write_report(self.run, out)
        upstream = [f"evaluate_{a}" for a in self.cfg.arms if f"evaluate_{a}" in self.hashes]
        self._stage("report", {"arms": list(self.cfg.arms)}, upstream, [out], build)
        return out

    # -- everything ----------------------------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        write_text(self.run / "experiment.toml", dump_toml(self.cfg.resolved()))
        self.stage_data()
        self.stage_split()
        aug: dict[str, Path] = {}
        if self.needs_styles:
            self.stage_styles()
            if "styleseg" in self.cfg.arms:
                gens = self.stage_generators(False)
                aug["separate"] = self.stage_augment(False, gens)
                self.stage_figures(gens)
            if "styleseg_cond" in self.cfg.arms:
                aug["conditional"] = self.stage_augment(True, self.stage_generators(True))
        oracle = self.stage_oracle_data() if "oracle" in self.cfg.arms else None
        skipped: dict[str, str] = {}
        for arm in self.cfg.arms:
            if arm == "denoise":
                continue  # reuses the baseline model
            datasets = self.arm_datasets(arm, aug, oracle)
            if datasets is None:
                skipped[arm] = "no target protocol recorded to build the oracle"
                continue
            up = ["data", "split"] + (["augment"] if arm == "styleseg" else []) + \
                (["augment_cond"] if arm == "styleseg_cond" else []) + (["oracle_data"] if arm == "oracle" else [])
            model = self.stage_train_arm(arm, datasets, up)
            self.stage_predict_arm(arm, model, [f"train_{arm}"])
        if "denoise" in self.cfg.arms:
            self.stage_predict_arm("denoise", self.run / "arms" / "baseline" / "model", ["train_baseline"])
        for arm in self.cfg.arms:
            if arm in skipped:
                continue
            self.stage_evaluate_arm(arm, [f"predict_{arm}"] + (["predict_baseline"] if arm != "baseline" else []))
        if self.cfg.data.agreement_pairs:
            self.stage_agreement()
        report = self.stage_report()
        summary = {"report": str(report), "skipped_arms": skipped, "timings": self.stages.timings(),
                   "all_skipped": all(r.skipped for r in self.stages.results)}
        return summary


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
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    rows = []
    for arm in meta["arms"]:
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
