"""The data side of an experiment: source and target datasets, the target split, and the oracle's data.

- the built-in benchmark (:func:`build_benchmark`), or imported data (:func:`import_side`), optionally with a
  target re-imaged under other protocols whose labels are kept for evaluation only (:func:`simulated_target`);
- the patient-level split of the target into a style pool and a test set (:func:`split_target`);
- the oracle's training data: the source re-imaged with the target's protocols (:func:`build_oracle`).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from styleseg.config import to_dict
from styleseg.errors import ConfigError, InputError
from styleseg.io.dataset import Dataset, subset_dataset
from styleseg.pipeline.config import DataConfig, ExperimentConfig


def _clear(*paths: Path) -> None:
    for p in paths:
        if p.exists():
            shutil.rmtree(p)


def build_benchmark(data_dir: Path, cfg: ExperimentConfig) -> None:
    """The built-in phantom benchmark as ``data_dir/source`` and ``data_dir/target``."""
    import os

    from styleseg.sim.benchmark import make_benchmark

    src, tgt, tmp = data_dir / "source", data_dir / "target", data_dir / "benchmark"
    _clear(src, tgt, tmp)
    s, t = make_benchmark(tmp, preset=cfg.benchmark_preset or cfg.preset, seed=cfg.seed, config=cfg.benchmark)
    os.replace(s, src)
    os.replace(t, tgt)
    shutil.rmtree(tmp)


def benchmark_overrides(cfg: ExperimentConfig) -> dict:
    """What the experiment changed in the benchmark's preset (the data stage hashes this, so a run folder made
    when the section was an untyped table stays up to date)."""
    from styleseg.sim.benchmark import BenchmarkConfig

    preset = cfg.benchmark_preset or cfg.preset
    base, mine = to_dict(BenchmarkConfig.preset(preset)), to_dict(cfg.benchmark)
    out = {k: v for k, v in mine.items() if base.get(k) != v}
    return out | ({"preset": cfg.benchmark_preset} if cfg.benchmark_preset else {})


def import_side(paths: tuple[str, ...], dataset: str | None, cases: tuple[str, ...], out: Path,
                cases_json: str | None) -> None:
    """One side (source or target) of an experiment at ``out``: an existing dataset's cases, or imported files."""
    _clear(out)
    if dataset is not None:
        ds = Dataset(dataset)
        subset_dataset(dataset, list(cases) or [r.case_id for r in ds], out)
        return
    from styleseg.io.importer import import_sources

    tmp = out.with_name(out.name + ".import")
    _clear(tmp)
    import_sources([Path(p) for p in paths], tmp, cases_json=Path(cases_json) if cases_json else None)
    subset_dataset(tmp, list(cases) or [r.case_id for r in Dataset(tmp)], out)
    shutil.rmtree(tmp)


def simulated_target(data: DataConfig, seed: int, out: Path) -> None:
    """Import the target cases, then re-image each with every target protocol; labels -> labelsRef."""
    from styleseg.sim.benchmark import reimage_dataset

    base = out.with_name("target_clean")
    import_side(data.target, data.target_dataset, data.target_cases, base, data.cases_json)
    _clear(out)
    reimage_dataset(base, out, data.target_protocols, np.random.default_rng(seed + 1), noise_free_input=False,
                    name="target (re-imaged)", meta={"protocols": list(data.target_protocols)},
                    label_role="labelsRef")
    shutil.rmtree(base)


def build_oracle(source: Path, out: Path, protocols: list[str], seed: int) -> None:
    """The source re-imaged with each target protocol (and the source itself): true target texture on source
    anatomy, with the source's labels."""
    from styleseg.sim.benchmark import reimage_dataset

    _clear(out)
    reimage_dataset(source, out, protocols, np.random.default_rng(seed + 2), noise_free_input=False,
                    name="oracle: source re-imaged with the target protocols", meta={"protocols": protocols},
                    keep_original=True, labelled_only=True)


def split_target(target: Path, cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """Split target cases by patient into a style pool and a test set (seeded, recorded)."""
    ds = Dataset(target)
    patients = sorted({r.patient for r in ds})
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
    pool_cases = [r.case_id for r in ds if r.patient in set(pool)]
    test_cases = [r.case_id for r in ds if r.patient not in set(pool)]
    if cfg.data.max_test_cases:
        test_cases = test_cases[: cfg.data.max_test_cases]
    return pool_cases, test_cases


def target_protocols(target: Path) -> list[str]:
    """Names of the scanner protocols the target cases were imaged with (if recorded)."""
    names = []
    for r in Dataset(target):
        p = r.extras.get("protocol")
        name = p.get("name") if isinstance(p, Mapping) else p
        if name and name not in names:
            names.append(str(name))
    return names


def pool_slices(dataset: Path, cases: list[str], per_case: int = 4) -> list[np.ndarray]:
    """A few central HU slices of each case (unlabelled texture for histmatch, FDA and the denoiser)."""
    ds = Dataset(dataset)
    out = []
    for cid in cases:
        arr = ds.load_image(cid).array
        z = arr.shape[0]
        idx = np.unique(np.linspace(z * 0.25, z * 0.75, per_case).astype(int).clip(0, z - 1))
        out.extend(arr[i].astype(np.float32) for i in idx)
    return out
