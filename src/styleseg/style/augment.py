"""m x (n+1) augmentation (paper sec. 2.3): every source label map through every generator.

The output is a dataset in the same nnU-Net v2 raw layout (usable by nnU-Net directly): the m original
cases plus, for every generator style k, one generated case per source case (the whole volume passed
slice by slice at native spacing: same geometry, labels identical to the source's). Per case extras
record ``provenance = {"source_case", "style", "generator", "style_case", "style_slice"}`` and the source's
``annotated`` list is copied (partial labels stay partial: an unannotated structure stays unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from styleseg.errors import InputError
from styleseg.io.atomic import check_output_folder
from styleseg.io.volume import Volume

log = logging.getLogger("styleseg.style.augment")


def find_generators(generators: Sequence[str | Path] | str | Path) -> list[Path]:
    """A list of generator folders, or a folder holding generator folders (as written by train_generators)."""
    if isinstance(generators, str | Path):
        g = Path(generators)
        if (g / "model.json").exists():
            return [g]
        if not g.is_dir():
            raise InputError(g, "generator folder does not exist", "train generators with `styleseg train-styles`")
        found = sorted(p.parent for p in g.glob("*/model.json"))
        if not found:
            raise InputError(g, "holds no generator folders (no */model.json)",
                             "pass the --out folder of `styleseg train-styles`")
        return found
    return [Path(p) for p in generators]


#: slices per generator call on a CPU: one 512 x 512 slice's activations (base 16, float32, 16 MiB a layer) stay
#: under glibc's largest mmap threshold, so with :func:`styleseg.trainer.tune_allocator` the heap reuses them; a
#: batch of 4 had every layer fault in and zero-fill fresh pages, half the augment stage's time in the kernel and
#: a memory load that slowed U-Nets training beside it (BENCHMARKS.md, "Session 20")
CPU_GEN_BATCH = 1
#: slices per generator call on a GPU
GPU_GEN_BATCH = 4


def generate_volume(model, label: np.ndarray, image: np.ndarray | None, style: int, seed: int,
                    device: torch.device | str = "cpu", batch: int | None = None) -> np.ndarray:
    """Run a generator over a label volume (z, y, x) slice by slice at native size -> int16 HU (z, y, x).

    A generator with a derived bone segment (``spec.bone_hu``) takes the bone from ``image`` (the source
    slices the label maps belong to). ``batch`` slices go through the network at a time (the result depends on
    it only by float rounding): by default :data:`CPU_GEN_BATCH` on a CPU, where the allocator is also told to
    keep freed memory (:func:`styleseg.trainer.tune_allocator`), and :data:`GPU_GEN_BATCH` elsewhere."""
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu:
        from styleseg.trainer import tune_allocator

        tune_allocator()
    batch = batch or (CPU_GEN_BATCH if on_cpu else GPU_GEN_BATCH)
    out = np.empty(label.shape, np.int16)
    if model.spec.image_input and image is None:
        raise ValueError("this generator reads the source slice (image_input): pass the source image too")
    if model.spec.bone_hu > 0:
        from styleseg.style.generator import add_bone_segment

        if image is None:
            raise ValueError("this generator derives a bone segment from the source image: pass the image too")
        label = add_bone_segment(label, image, model.spec.body_value, model.spec.bone_hu, model.spec.num_classes - 1,
                                 model.spec.bone_low_hu)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for z0 in range(0, label.shape[0], batch):
            lab = torch.from_numpy(np.asarray(label[z0:z0 + batch], np.int64)).to(device)
            noise = torch.randn(lab.shape[0], 1, *lab.shape[1:], generator=g).to(device)
            src = None
            if model.spec.image_input or model.spec.bone_source:
                src = torch.from_numpy(np.asarray(image[z0:z0 + batch], np.float32))[:, None].to(device)
            st = torch.full((lab.shape[0],), style, dtype=torch.long, device=device)
            hu = model(lab, st, noise, src)[:, 0].float().cpu().numpy()
            out[z0:z0 + batch] = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    return out


def augment(source: str | Path, generators: Sequence[str | Path] | str | Path, out: str | Path, seed: int = 0,
            device: str = "auto", progress: bool = True) -> Path:
    """Write the m x (n+1) augmented dataset to ``out`` and return it (see the module docstring)."""
    from styleseg.io.dataset import Dataset, DatasetWriter
    from styleseg.runs import choose_device
    from styleseg.style.generator import load_generator

    source, out = Path(source), Path(out)
    check_output_folder(out, [source, *find_generators(generators)])
    ds = Dataset(source)
    cases = ds.labelled_cases("labelsTr")
    if not cases:
        raise InputError(source, "the source dataset has no labelled cases (labelsTr)", "import labelled data first")
    dev = choose_device(device)
    gens = []
    for gp in find_generators(generators):
        model, meta = load_generator(gp, dev)
        if meta.get("schema") != ds.schema.to_labels_dict():
            raise InputError(gp / "model.json", f"generator label schema {meta.get('schema')} differs from the "
                             f"source's {ds.schema.to_labels_dict()}", "train generators on this source dataset")
        for k, rec in enumerate(meta.get("styles", [])):
            gens.append((gp, model, k, rec))
    meta_out = {**ds.meta, "augmentation": {"source": str(source.resolve()), "n_styles": len(gens),
                                            "generators": sorted({str(g[0].resolve()) for g in gens}),
                                            "seed": seed}}
    total = len(cases) * (len(gens) + 1)
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        bar.start()
        task = bar.add_task("augment", total=total)
    try:
        with DatasetWriter(out, f"{ds.name}_aug", ds.schema, f"{ds.name} x {len(gens)} styles (styleseg augment)",
                           meta=meta_out) as w:
            for ci, rec in enumerate(cases):
                img = ds.load_image(rec.case_id)
                lab = ds.load_label(rec.case_id, image=img)
                base_extras = {k: v for k, v in rec.extras.items() if k != "provenance"}
                w.add_case(rec.case_id, img, lab, annotated=rec.annotated, derived=rec.derived, **base_extras,
                           provenance={"source_case": rec.case_id, "style": None, "generator": None})
                if bar is not None:
                    bar.advance(task)
                for gi, (gp, model, k, srec) in enumerate(gens):
                    hu = generate_volume(model, lab.array, img.array, k, seed=seed * 100_003 + ci * 1009 + gi,
                                         device=dev)
                    gen_img = Volume(hu, img.spacing, img.origin, img.direction, dict(img.tags))
                    cid = f"{rec.case_id}_s{int(srec.get('index', k)):02d}" + ("c" if model.spec.conditional else "")
                    w.add_case(cid, gen_img, lab.with_array(lab.array.copy()), annotated=rec.annotated,
                               derived=rec.derived, **base_extras,
                               provenance={"source_case": rec.case_id, "style": int(srec.get("index", k)),
                                           "generator": str(gp.resolve()), "style_case": srec.get("case_id"),
                                           "style_slice": srec.get("slice"), "slices": "all, same geometry"})
                    if bar is not None:
                        bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    log.info("augmented dataset with %d cases (%d source x %d styles + originals) -> %s", total, len(cases),
             len(gens), out)
    return out
