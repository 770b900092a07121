"""The built-in benchmark (`styleseg make-benchmark`) and dataset re-imaging (`styleseg simulate`).

``make_benchmark`` writes two datasets (nnU-Net v2 raw layout, :mod:`styleseg.io.dataset`):

- ``OUT/source``: annotated phantom patients imaged with the reference protocol ("standard": full dose,
  standard kernel); labels in ``labelsTr``.
- ``OUT/target``: other (disjoint) phantom patients, each imaged by one of the lower-dose protocols
  with other kernels (:data:`styleseg.sim.scanner.TARGET_PROTOCOLS`, cycled over patients); labels in
  ``labelsRef`` (evaluation only, never for training); the protocol of each case in its extras.

Both appear together or not at all (built under a temporary name, then renamed).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from styleseg.config import check_preset, to_dict
from styleseg.errors import InputError
from styleseg.io.atomic import atomic_dir
from styleseg.io.dataset import Dataset, DatasetWriter
from styleseg.labels import LabelSchema
from styleseg.sim.phantom import PhantomConfig, make_phantom
from styleseg.sim.scanner import PROTOCOLS, TARGET_PROTOCOLS, Protocol, get_protocol, reimage

log = logging.getLogger("styleseg.sim.benchmark")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Sizes of the built-in benchmark. ``size`` pixels square at native spacing (0.80-0.98 mm); a
    smaller field of view holds a proportionally smaller patient, never a downsampled one."""

    n_source: int = 10
    n_target: int = 12
    source_slices: int = 8
    target_slices: int = 6
    size: int = 320
    slice_mm: float = 5.0
    source_protocol: str = "standard"
    target_protocols: tuple[str, ...] = TARGET_PROTOCOLS

    def __post_init__(self) -> None:
        get_protocol(self.source_protocol)
        for p in self.target_protocols:
            get_protocol(p)

    @classmethod
    def preset(cls, name: str) -> BenchmarkConfig:
        check_preset(name)
        if name == "quick":
            return cls()
        return cls(n_source=30, n_target=60, source_slices=40, target_slices=40, size=512)


def _case(writer: DatasetWriter, case_id: str, seed: int, slices: int, cfg: BenchmarkConfig, prot: Protocol,
          rng: np.random.Generator, role: str) -> None:
    img, lab = make_phantom(seed, PhantomConfig(size=cfg.size, n_slices=slices, slice_mm=cfg.slice_mm))
    prot = get_protocol(prot.name) if prot.name in PROTOCOLS else prot
    hu = reimage(img.array, img.spacing[0], prot, rng, noise_free_input=True)
    out = img.with_array(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    # every structure is known in a phantom (absent from a slice range = truly absent, not unknown)
    writer.add_case(case_id, out, lab, annotated=writer.schema.names, label_role=role, protocol=prot.name,
                    protocol_params=prot.to_json(),
                    phantom_seed=seed, patient_scale=img.tags["patient_scale"],
                    slice_thickness_mm=cfg.slice_mm)


def make_benchmark(out: Path, preset: str = "quick", seed: int = 0,
                   config: BenchmarkConfig | None = None) -> tuple[Path, Path]:
    """Write ``out/source`` and ``out/target`` (see the module docstring); returns their paths."""
    from rich.progress import Progress

    out = Path(out)
    cfg = config or BenchmarkConfig.preset(preset)
    if out.exists():
        raise InputError(out, "output already exists", "choose another --out or remove it first")
    schema = LabelSchema.default()
    rng = np.random.default_rng([seed, 7])
    src_prot = get_protocol(cfg.source_protocol)
    base = {"benchmark": "styleseg-phantoms", "preset": preset, "seed": seed, "phantom": True,
            "config": to_dict(cfg)}
    n_total = cfg.n_source + cfg.n_target
    with atomic_dir(out) as tmp, Progress(transient=True) as progress:
        task = progress.add_task("make-benchmark", total=n_total)
        with DatasetWriter(tmp / "source", "phantom-source", schema,
                           "Procedural thorax phantoms, reference protocol, annotated (labelsTr).",
                           meta={**base, "domain": "source", "protocol": src_prot.to_json()}) as w:
            for i in range(cfg.n_source):
                _case(w, f"src_{i:03d}", seed * 1_000_003 + i, cfg.source_slices, cfg, src_prot, rng, "labelsTr")
                progress.advance(task)
        with DatasetWriter(tmp / "target", "phantom-target", schema,
                           "Procedural thorax phantoms, lower-dose protocols and other kernels; labels are "
                           "for evaluation only (labelsRef).",
                           meta={**base, "domain": "target",
                                 "protocols": {p: get_protocol(p).to_json() for p in cfg.target_protocols}}) as w:
            for i in range(cfg.n_target):
                prot = get_protocol(cfg.target_protocols[i % len(cfg.target_protocols)])
                _case(w, f"tgt_{i:03d}", seed * 1_000_003 + 500_000 + i, cfg.target_slices, cfg, prot, rng,
                      "labelsRef")
                progress.advance(task)
    log.info("benchmark written to %s (%d source, %d target patients)", out, cfg.n_source, cfg.n_target)
    return out / "source", out / "target"


def simulate_dataset(dataset: Path, out: Path, protocol: Protocol | str | None = None,
                     dose_fraction: float | None = None, kernel: str | None = None, seed: int = 0,
                     noise_free_input: bool | None = None) -> Path:
    """Re-image every case of ``dataset`` with a protocol (by name, or dose fraction + kernel) into ``out``.

    Labels are carried over unchanged with the same role; the protocol is recorded in dataset.json
    (``meta["simulated"]`` and each case's ``protocol``). ``noise_free_input`` None: True for phantom
    datasets (``meta["phantom"]``), else False (a real scan: only the extra noise is inserted).
    """
    from rich.progress import Progress

    dataset, out = Path(dataset), Path(out)
    prot = get_protocol(protocol, dose_fraction, kernel)  # bad protocol/kernel/dose fail before any work
    ds = Dataset(dataset)
    if len(ds) == 0:
        raise InputError(dataset, "dataset has no cases", "import images first (`styleseg import`)")
    missing = [c.case_id for c in ds if not ds.image_path(c.case_id).exists()]
    if missing:
        raise InputError(ds.image_path(missing[0]), f"{len(missing)} case(s) have no image file "
                         f"(first: {missing[0]})", "the dataset is incomplete; re-create it")
    if out.exists():
        raise InputError(out, "output already exists", "choose another --out or remove it first")
    clean = bool(ds.meta.get("phantom", False)) if noise_free_input is None else noise_free_input
    rng = np.random.default_rng([seed, 11])
    meta = {**ds.meta, "simulated": {"protocol": prot.to_json(), "from": str(dataset), "seed": seed,
                                     "noise_free_input": clean}}
    with DatasetWriter(out, f"{ds.name}-{prot.name}", ds.schema, f"{ds.name} re-imaged with {prot.name}",
                       meta=meta) as w, Progress(transient=True) as progress:
        task = progress.add_task(f"simulate {prot.name}", total=len(ds))
        for rec in ds:
            img = ds.load_image(rec.case_id)
            lab = ds.load_label(rec.case_id, img)
            sx, sy = img.spacing[0], img.spacing[1]
            if not math.isclose(sx, sy, rel_tol=0.02):
                raise InputError(ds.image_path(rec.case_id), f"anisotropic pixels {sx:.3f} x {sy:.3f} mm",
                                 "resample the image to square pixels first")
            hu = reimage(img.array.astype(np.float32), sx, prot, rng, noise_free_input=clean)
            new = img.with_array(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
            extras = {k: v for k, v in rec.extras.items() if k not in ("protocol", "protocol_params")}
            w.add_case(rec.case_id, new, lab, annotated=rec.annotated if lab is not None else None,
                       derived=rec.derived, label_role=rec.labels or "labelsTr", protocol=prot.name,
                       protocol_params=prot.to_json(), **extras)
            progress.advance(task)
    return out
