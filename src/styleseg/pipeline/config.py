"""The experiment schema: data, arms, and one typed section per stage (each a preset plus overrides).

An experiment file (``EXPERIMENT.toml``) holds top-level settings (name, preset, seed, arms, styles), a
``[data]`` table and one table per stage: ``[benchmark]``, ``[select]``, ``[generators]``, ``[train_seg]``,
``[evaluate]``. Every section is resolved once, at load time, by :func:`styleseg.config.resolve` on top of
the experiment's preset, so a typo or an impossible value in any section fails before any stage runs, with
the file and section in the message. The experiment ``seed`` is the seed of every stage.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from styleseg.config import check_preset, from_dict, load_toml, new_option, resolve, to_dict
from styleseg.errors import ConfigError
from styleseg.eval.evaluate import EvaluateConfig
from styleseg.pipeline.arms import ARMS
from styleseg.pipeline.job_config import JobConfig
from styleseg.seg.train import SegTrainConfig
from styleseg.sim.benchmark import BenchmarkConfig
from styleseg.style.select import SelectConfig
from styleseg.style.train import GeneratorConfig

ALL_ARMS = tuple(ARMS)
#: the stage sections of an experiment and their config classes
SECTIONS: dict[str, type] = {"benchmark": BenchmarkConfig, "select": SelectConfig, "generators": GeneratorConfig,
                             "train_seg": SegTrainConfig, "evaluate": EvaluateConfig}
SEEDED = ("generators", "train_seg")  # sections whose seed is the experiment's


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
    #: reference labels for some target cases (a dataset folder, or DICOM/NIfTI to import; case ids of the
    #: target): the job path evaluates the arms there and nowhere else (docs/job.md)
    reference: str | None = new_option(None)

    def __post_init__(self) -> None:
        n_src = int(self.benchmark) + int(bool(self.source)) + int(self.source_dataset is not None)
        if n_src != 1:
            raise ConfigError("[data]: give exactly one of benchmark = true, source = [...], source_dataset = '...'")
        n_tgt = int(self.benchmark) + int(bool(self.target)) + int(self.target_dataset is not None)
        if n_tgt != 1:
            raise ConfigError("[data]: give exactly one of benchmark = true, target = [...], target_dataset = '...'")
        if not 0.0 < self.style_pool_fraction < 1.0:
            raise ConfigError("[data].style_pool_fraction must be in (0, 1)")
        if self.max_test_cases < 0:
            raise ConfigError("[data].max_test_cases must be >= 0 (0: all)")
        if self.target_protocols:
            from styleseg.sim.scanner import get_protocol

            for p in self.target_protocols:
                get_protocol(p)


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data, arms and the resolved per-stage settings.

    A section left out (None) is the experiment preset's, with the experiment seed; construct with
    overrides through :meth:`with_sections` or :func:`load_experiment`."""

    name: str = "experiment"
    preset: str = "quick"
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(benchmark=True))
    arms: tuple[str, ...] = ALL_ARMS
    n_styles: int = 4
    style_slices: tuple[str, ...] = ()  # manual "CASE:SLICE" list instead of automatic selection
    #: training seeds: every trained arm runs once per seed (empty: ``seed`` alone); the report gives means with
    #: CIs over seeds and cases and each arm's paired difference to ``reference``
    seeds: tuple[int, ...] = ()
    #: the arm every other arm is compared with over seeds (None: "reference" if it runs, else "baseline")
    reference: str | None = None
    #: U-Nets trained at the same time, each in a worker process (1: one after another, here); with as many
    #: jobs as cores each worker uses one thread, which on a small CPU beats one process with several threads
    jobs: int = 1
    #: the benchmark's own preset (None: the experiment's)
    benchmark_preset: str | None = None
    benchmark: BenchmarkConfig | None = None
    select: SelectConfig | None = None
    generators: GeneratorConfig | None = None
    train_seg: SegTrainConfig | None = None
    evaluate: EvaluateConfig | None = None
    #: the job path: segment an unannotated target collection (pipeline/job_config.py; None: the defaults)
    job: JobConfig | None = new_option(None)

    def __post_init__(self) -> None:
        check_preset(self.preset)
        if self.benchmark_preset is not None:
            check_preset(self.benchmark_preset)
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            hints = [f"{b!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(b, ALL_ARMS, 1))
                                 else "") for b in bad]
            raise ConfigError(f"arms: unknown arm {', '.join(hints)}; choose from {', '.join(ALL_ARMS)}")
        if self.reference is None and not {"baseline", "reference"} & set(self.arms):
            raise ConfigError("arms: 'baseline' or 'reference' is required (every arm is compared against it)")
        for a in self.arms:
            for needs in (ARMS[a].reuses, ARMS[a].rounds_from, ARMS[a].starts_from):
                if needs and needs not in self.arms:
                    raise ConfigError(f"arms: {a!r} starts from the model of {needs!r}; add that arm too")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"seeds {list(self.seeds)}: give distinct non-negative integers")
        if self.jobs < 1:
            raise ConfigError(f"jobs = {self.jobs}: the number of U-Nets trained at once must be >= 1")
        if self.reference is not None and self.reference not in self.arms:
            raise ConfigError(f"reference = {self.reference!r} is not one of the arms ({', '.join(self.arms)})")
        if self.n_styles < 1:
            raise ConfigError("n_styles must be >= 1")
        for s in self.style_slices:
            case, sep, idx = s.rpartition(":")
            if not sep or not case or not idx.isdigit():
                raise ConfigError(f"style_slices: {s!r} is not CASE:SLICE (e.g. 'LUNG1-008:22')")
        for name, cls in SECTIONS.items():
            if getattr(self, name) is None:
                preset = self.benchmark_preset or self.preset if name == "benchmark" else self.preset
                seed = {"seed": self.seed} if name in SEEDED else None
                object.__setattr__(self, name, resolve(cls, preset, seed, where=f"[{name}]"))

    def with_sections(self, **sections: Mapping[str, Any] | None) -> ExperimentConfig:
        """A copy whose stage sections are the preset's plus these overrides (``train_seg={"epochs": 2}``)."""
        resolved = {}
        for name, over in sections.items():
            if name not in SECTIONS:
                raise ConfigError(f"unknown section [{name}]; sections: {', '.join(SECTIONS)}")
            preset = self.benchmark_preset or self.preset if name == "benchmark" else self.preset
            resolved[name] = resolve(SECTIONS[name], preset, over, {"seed": self.seed} if name in SEEDED else None,
                                     where=f"[{name}]")
        return dataclasses.replace(self, **resolved)

    # --- the resolved per-stage configs ----------------------------------------------------------------
    def seg_config(self, **changes: Any) -> SegTrainConfig:
        assert self.train_seg is not None
        return resolve(SegTrainConfig, None, to_dict(self.train_seg), changes, where="[train_seg]")

    def generator_config(self, **changes: Any) -> GeneratorConfig:
        assert self.generators is not None
        return self.generators.replace(**changes) if changes else self.generators

    @property
    def training_seeds(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)

    @property
    def reference_arm(self) -> str:
        return self.reference or ("reference" if "reference" in self.arms else "baseline")

    @property
    def needs_styles(self) -> bool:
        return any(d.startswith("aug_") for a in self.arms for d in ARMS[a].train_on)

    def resolved(self) -> dict[str, Any]:
        """Everything, with presets expanded (what ``--dry-run`` prints and the run folder keeps)."""
        d = to_dict(self)
        if not self.needs_styles:
            d.pop("generators")
            d.pop("select")
        if not self.data.benchmark:
            d.pop("benchmark")
        return d


def _absolute(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """[data] paths given relative to the experiment file, made absolute."""
    def fix(p: str) -> str:
        return p if Path(p).is_absolute() else str((base / p).resolve())

    for key in ("source", "target"):
        if key in data:
            data[key] = [fix(p) for p in data[key]] if isinstance(data[key], list) else data[key]
    if isinstance(data.get("agreement_pairs"), list):
        data["agreement_pairs"] = [[fix(p) for p in pair] if isinstance(pair, list) else pair
                                   for pair in data["agreement_pairs"]]
    for key in ("source_dataset", "target_dataset", "cases_json", "reference"):
        if isinstance(data.get(key), str):
            data[key] = fix(data[key])
    return data


def load_experiment(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read EXPERIMENT.toml (relative data paths are taken relative to the file); every section is resolved and
    checked here, so a typo anywhere fails before any work, naming the file."""
    path = Path(path)
    raw = load_toml(path)
    raw.update(dict(overrides or {}))
    sections = {name: raw.pop(name) for name in SECTIONS if name in raw}
    for name, table in sections.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{path}: [{name}] must be a table, got {table!r}")
    bench = dict(sections.get("benchmark", {}))
    if "preset" in bench:
        raw["benchmark_preset"] = bench.pop("preset")
        sections["benchmark"] = bench
    if isinstance(raw.get("data"), Mapping):
        raw["data"] = _absolute(dict(raw["data"]), path.parent)
    cfg = from_dict(ExperimentConfig, raw, str(path))
    resolved = {}
    for name, table in sections.items():
        preset = cfg.benchmark_preset or cfg.preset if name == "benchmark" else cfg.preset
        resolved[name] = resolve(SECTIONS[name], preset, table, {"seed": cfg.seed} if name in SEEDED else None,
                                 where=f"{path} [{name}]")
    return dataclasses.replace(cfg, **resolved)


#: the demo's comparison: the paper's baseline, the strong reference, then styleseg and the oracle each as a
#: fine-tuning of the reference's U-Net (a third more steps at a third of the rate: they keep every structure the
#: reference has learnt, and the second round is a third as long); examples/phantom.toml runs every arm
DEMO_ARMS: tuple[str, ...] = ("baseline", "reference", "styleseg_ft_ref", "oracle_ft_ref")
#: demo sizes for the quick preset: 2 U-Nets, then 2 fine-tunings, two at a time (one thread each), and 3
#: generators on 2 CPU cores. 400 U-Net steps with the cross-entropy balanced over labels at first and plain by the
#: last step: with plain cross-entropy the phantom's spinal cord (57 px, 27 HU above the CSF around it) waited a
#: plateau of 600 steps to past 1000, so 1000 steps found it in 2 to 4 seeds of 5; balanced, every seed finds the
#: oesophagus and cord in the first 200 steps (BENCHMARKS.md "Session 27"). 128-px crops (native spacing, a third of
#: the 320-px slice) make the steps affordable; epochs of 50 steps keep the validation passes few.
DEMO_GENERATORS: dict[str, Any] = {"steps": 60}
DEMO_TRAIN_SEG: dict[str, Any] = {"epochs": 8, "steps_per_epoch": 50, "crop": 128, "batch_size": 8, "amp": "auto",
                                  "ce_balance": 1.0, "ce_balance_decay": True}


def demo_config(preset: str = "quick", arms: tuple[str, ...] | None = None) -> ExperimentConfig:
    """The built-in demo: the phantom benchmark and :data:`DEMO_ARMS` (or ``arms``), sized for 2 CPU cores."""
    small = preset == "quick"
    cfg = ExperimentConfig(name="styleseg demo (phantom benchmark)", preset=preset, data=DataConfig(benchmark=True),
                           arms=arms or DEMO_ARMS, n_styles=3 if small else 6, jobs=2 if small else 1)
    return cfg.with_sections(generators=DEMO_GENERATORS, train_seg=DEMO_TRAIN_SEG) if small else cfg
