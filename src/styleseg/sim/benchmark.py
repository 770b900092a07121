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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from styleseg.config import check_preset, to_dict
from styleseg.errors import InputError
from styleseg.io.atomic import atomic_dir, check_output_folder
from styleseg.io.dataset import REIMAGED_FROM, Dataset, DatasetWriter
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


#: the extras a re-imaging replaces rather than copies from the case it re-images
REIMAGE_KEYS = ("protocol", "protocol_params", "patient", REIMAGED_FROM)


def reimage_dataset(dataset: Path, out: Path, protocols: Sequence[Protocol | str], rng: np.random.Generator,
                    noise_free_input: bool, name: str, description: str = "", meta: dict | None = None,
                    label_role: str | None = None, keep_original: bool = False, labelled_only: bool = False,
                    suffix: bool = True, clip: tuple[float, float] | None = None) -> Path:
    """Re-image every case of ``dataset`` with each of ``protocols`` into a new dataset ``out``: the same anatomy
    and labels under other texture. The one re-imaging path of styleseg: ``styleseg simulate``, the pipeline's
    simulated target (labels moved to ``labelsRef``) and its oracle arm (``keep_original``: the source case too).

    Each new case is ``<case>_<protocol>`` (``suffix``) or keeps its id, records ``patient`` (the source case's
    patient, so splits keep the versions of one patient together), ``protocol`` and ``protocol_params``, and
    keeps the source's other extras. Beside its original (``keep_original``) a copy also records
    ``reimaged_from``: it is a version of a case of the same dataset, which training never validates on.
    ``label_role`` moves labels (None: as they are); ``labelled_only`` skips unlabelled cases; ``clip``: the HU
    range the result is clipped to (None: int16 only). ``rng`` draws the noise of every slice in case order, so a
    seed reproduces the dataset."""
    ds = Dataset(dataset)
    prots = [get_protocol(p.name if isinstance(p, Protocol) and p.name in PROTOCOLS else p) for p in protocols]
    with DatasetWriter(out, name, ds.schema, description, meta=dict(meta or {})) as w:
        for rec in (ds.labelled_cases() if labelled_only else ds.cases):
            img = ds.load_image(rec.case_id)
            lab = ds.load_label(rec.case_id, img)
            kept = {k: v for k, v in rec.extras.items() if k not in REIMAGE_KEYS}
            copy_of = {REIMAGED_FROM: rec.case_id} if keep_original else {}
            role = label_role or rec.labels or "labelsTr"
            ann = rec.annotated if lab is not None else None
            if keep_original:
                w.add_case(rec.case_id, img, lab, annotated=ann, derived=rec.derived, label_role=role,
                           patient=rec.patient, **kept)
            sx, sy = img.spacing[0], img.spacing[1]
            if not math.isclose(sx, sy, rel_tol=0.02):
                raise InputError(ds.image_path(rec.case_id), f"anisotropic pixels {sx:.3f} x {sy:.3f} mm",
                                 "resample the image to square pixels first")
            for prot in prots:
                hu = reimage(img.array.astype(np.float32), sx, prot, rng, noise_free_input=noise_free_input)
                if clip is not None:
                    hu = np.clip(np.rint(hu), *clip)
                cid = f"{rec.case_id}_{prot.name}" if suffix else rec.case_id
                w.add_case(cid, img.with_array(hu), lab, annotated=ann, derived=rec.derived, label_role=role,
                           patient=rec.patient, protocol=prot.name, protocol_params=prot.to_json(), **copy_of, **kept)
    return out


def simulate_dataset(dataset: Path, out: Path, protocol: Protocol | str | None = None,
                     dose_fraction: float | None = None, kernel: str | None = None, seed: int = 0,
                     noise_free_input: bool | None = None) -> Path:
    """Re-image every case of ``dataset`` with a protocol (by name, or dose fraction + kernel) into ``out``.

    Labels are carried over unchanged with the same role; the protocol is recorded in dataset.json
    (``meta["simulated"]`` and each case's ``protocol``). ``noise_free_input`` None: True for phantom
    datasets (``meta["phantom"]``), else False (a real scan: only the extra noise is inserted).
    """
    dataset, out = Path(dataset), Path(out)
    check_output_folder(out, [dataset])
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
    meta = {**ds.meta, "simulated": {"protocol": prot.to_json(), "from": str(dataset), "seed": seed,
                                     "noise_free_input": clean}}
    return reimage_dataset(dataset, out, [prot], np.random.default_rng([seed, 11]), clean, f"{ds.name}-{prot.name}",
                           f"{ds.name} re-imaged with {prot.name}", meta, suffix=False, clip=(-1024, 3071))
