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


#: physics randomisation: the kernels and the dose range the source is re-imaged with (no knowledge of the target)
PHYSICS_KERNELS = ("smooth", "standard", "sharp", "lung")
PHYSICS_DOSE = (0.05, 1.0)


def build_physics(source: Path, out: Path, versions: int, seed: int) -> None:
    """Physics randomisation (beyond the paper; cf. FBPAug, Saparov et al. 2021): every source case re-imaged
    ``versions`` times by the CT simulator, each with a random dose fraction (log-uniform in
    :data:`PHYSICS_DOSE`) and reconstruction kernel (:data:`PHYSICS_KERNELS`), plus the case itself. The natural
    competitor of a learned style: texture variety without looking at the target."""
    from styleseg.io.dataset import REIMAGED_FROM, DatasetWriter
    from styleseg.sim.benchmark import REIMAGE_KEYS
    from styleseg.sim.scanner import get_protocol, reimage

    _clear(out)
    ds = Dataset(source)
    rng = np.random.default_rng([seed, 13])
    drawn = []
    with DatasetWriter(out, "physics randomisation: source re-imaged at random doses and kernels", ds.schema,
                       meta={"physics": {"versions": versions, "kernels": list(PHYSICS_KERNELS),
                                         "dose": list(PHYSICS_DOSE), "seed": seed}}) as w:
        for rec in ds.labelled_cases():
            img = ds.load_image(rec.case_id)
            lab = ds.load_label(rec.case_id, img)
            kept = {k: v for k, v in rec.extras.items() if k not in REIMAGE_KEYS}
            w.add_case(rec.case_id, img, lab, annotated=rec.annotated, derived=rec.derived, patient=rec.patient,
                       **kept)
            for k in range(versions):
                dose = float(np.exp(rng.uniform(*np.log(PHYSICS_DOSE))))
                prot = get_protocol(dose_fraction=round(dose, 4), kernel=str(rng.choice(PHYSICS_KERNELS)))
                hu = reimage(img.array.astype(np.float32), img.spacing[0], prot, rng, noise_free_input=False)
                drawn.append(prot.name)
                w.add_case(f"{rec.case_id}_p{k}", img.with_array(hu), lab, annotated=rec.annotated,
                           derived=rec.derived, patient=rec.patient, protocol=prot.name,
                           protocol_params=prot.to_json(), **{REIMAGED_FROM: rec.case_id}, **kept)
        w.meta["physics"]["protocols"] = drawn


#: cyclic training: the share of the style pool's slices kept as pseudo-labels, the most confident first
PSEUDO_KEEP = 0.5


def build_pseudo_labels(model: Path, pool: Path, out: Path, predict_options: dict, keep: float = PSEUDO_KEEP,
                        ) -> dict:
    """One round of the paper's cyclic training (its future work): the model segments the target's style pool
    (unlabelled target patients that are never tested), and the ``keep`` share of its slices it is most sure
    of (mean winning-class probability over the pixels it labels) become training cases with those labels,
    one single-slice case per slice. Returns what was kept, for the run's record."""
    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import Volume
    from styleseg.seg.inputs import to_canonical
    from styleseg.seg.predict import Predictor

    _clear(out)
    pred = Predictor(model, **predict_options)
    ds = Dataset(pool)
    slices = []
    for rec in ds:
        img = ds.load_image(rec.case_id)
        flips = pred.check_geometry(img.spacing, img.direction, ds.image_path(rec.case_id))
        conf = np.zeros(img.shape[0])
        lab = to_canonical(pred.predict_array(to_canonical(np.asarray(img.array), flips), confidence=conf), flips)
        slices += [(float(conf[z]), rec, img, lab, z) for z in range(img.shape[0]) if (lab[z] > 0).any()]
    slices.sort(key=lambda t: -t[0])
    chosen = slices[:max(1, int(round(keep * len(slices))))] if slices else []
    record = {"slices": len(slices), "kept": len(chosen), "keep": keep,
              "min_confidence": chosen[-1][0] if chosen else None,
              "mean_confidence": float(np.mean([c[0] for c in chosen])) if chosen else None}
    with DatasetWriter(out, "pseudo-labelled target slices (cyclic training)", ds.schema,
                       meta={"pseudo_labels": {**record, "model": str(model)}}) as w:
        for conf, rec, img, lab, z in chosen:
            origin = tuple(float(v) for v in img.index_to_physical(np.array([[z, 0, 0]]))[0])
            one = Volume(img.array[z:z + 1], img.spacing, origin, img.direction, dict(img.tags))
            w.add_case(f"{rec.case_id}_z{z:03d}", one, one.with_array(lab[z:z + 1]), annotated=ds.schema.names,
                       patient=rec.patient, pseudo_label={"confidence": round(conf, 4), "slice": z})
    return record
