"""``styleseg segment``: a collection of CT volumes -> one label volume per case on its own grid.

Inputs are discovered (NIfTI files, DICOM series folders, dataset folders), sorted by case id and sharded
(``part_id`` of ``num_parts``); each case is streamed through the :class:`~styleseg.seg.predict.Predictor`
a chunk of slices at a time and written atomically, so ``continue_`` can trust any output that exists.
A bad case is logged and recorded in the report; the others still run.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.errors import ConfigError, InputError
from styleseg.io.atomic import check_output_folder
from styleseg.seg.inputs import to_canonical
from styleseg.seg.predict import Predictor

log = logging.getLogger("styleseg.seg.segment")


@dataclass
class SegmentReport:
    """What :func:`segment` did: written, skipped (already done, ``--continue``) and failed cases."""

    out: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    slices: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "slices": self.slices, "seconds": round(self.seconds, 2)}


#: errors of the output side (disk full, read-only, quota): they stop a segmentation instead of failing each case
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def discover_inputs(inputs: Sequence[Path]) -> list[tuple[str, Path, str]]:
    """(case id, path, kind) for NIfTI files, DICOM series folders and dataset folders; kind is
    "nifti" or "dicom". Sorted by case id; duplicate ids raise InputError."""
    from styleseg.io.volume import is_nifti

    found: list[tuple[str, Path, str]] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise InputError(p, "input does not exist", "check the path")
        if p.is_file() and is_nifti(p):
            name = p.name[: -len(".nii.gz")] if p.name.lower().endswith(".nii.gz") else p.stem
            found.append((name[:-5] if name.endswith("_0000") else name, p, "nifti"))
        elif p.is_dir() and (p / "dataset.json").exists():
            from styleseg.io.dataset import Dataset

            ds = Dataset(p)
            found += [(c.case_id, ds.image_path(c.case_id), "nifti") for c in ds.cases]
        elif p.is_dir():
            found.append((p.name, p, "dicom"))
        else:
            raise InputError(p, "not a NIfTI file, DICOM series folder or dataset folder",
                             "pass .nii/.nii.gz files, a folder of DICOM slices, or a dataset folder")
    found.sort(key=lambda t: t[0])
    ids = [f[0] for f in found]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(None, f"several inputs map to the same case id(s) {dup}", "rename the inputs")
    return found


def segment(inputs: Sequence[Path], model: Path, out: Path, continue_: bool = False, part_id: int = 0,
            num_parts: int = 1, dicom_seg: bool = False, device: str = "auto", batch_size: int = 8,
            dtype: str = "float32", channels_last: bool = False, force_spacing: bool = False,
            chunk_slices: int = 32, allow_incomplete: bool = False) -> SegmentReport:
    """Segment every case of ``inputs`` into ``out/<case>.nii.gz`` (uint8 labels on the input grid).

    Cases are sorted by id and this call does those with ``index % num_parts == part_id``;
    ``continue_`` skips cases whose output exists (outputs are atomic, so an existing one is complete).
    NIfTI input is streamed ``chunk_slices`` slices at a time and the output is written as it is produced.
    """
    from styleseg.io.atomic import write_json

    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ConfigError(f"--part-id {part_id} must be in [0, --num-parts {num_parts}) and --num-parts >= 1")
    if chunk_slices < 1:
        raise ConfigError(f"chunk_slices must be >= 1, got {chunk_slices}")
    pred = Predictor(model, device=device, batch_size=batch_size, dtype=dtype, channels_last=channels_last,
                     force_spacing=force_spacing, allow_incomplete=allow_incomplete)
    cases = discover_inputs(inputs)
    mine = [c for i, c in enumerate(cases) if i % num_parts == part_id]
    out = Path(out)
    check_output_folder(out, inputs)  # before any work: never write into the data being read
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from styleseg.io.atomic import output_error

        raise output_error(out, e) from e
    rep = SegmentReport(out)
    t0 = time.perf_counter()
    for cid, path, kind in mine:
        dest = out / f"{cid}.nii.gz"
        if continue_ and dest.exists():
            rep.skipped.append(cid)
            continue
        try:
            if kind == "nifti":
                if dicom_seg:
                    log.warning("%s: --dicom-seg needs DICOM input (the SEG references its slices); "
                                "writing NIfTI only", cid)
                rep.slices += segment_nifti_streaming(pred, path, dest, chunk_slices)
            else:
                rep.slices += segment_dicom(pred, path, dest, chunk_slices, dicom_seg)
            rep.done.append(cid)
            log.debug("segmented %s -> %s", cid, dest)
        except OSError as e:
            if e.errno in OUTPUT_ERRNOS:  # the output side is broken: every further case would fail the same way
                from styleseg.io.atomic import output_error

                raise output_error(dest, e) from e
            rep.failed[cid] = str(e)
            log.error("skipped %s: %s", cid, e)
        except InputError as e:
            if e.problem.startswith("cannot write"):  # the output side is broken, see above
                raise
            rep.failed[cid] = str(e)
            log.error("skipped %s: %s", cid, e)
        except (ValueError, EOFError, RuntimeError) as e:
            rep.failed[cid] = str(e)
            log.error("skipped %s: %s", cid, e)
    rep.seconds = time.perf_counter() - t0
    name = "segment_report.json" if num_parts == 1 else f"segment_report.part{part_id}.json"
    write_json(out / name, rep.to_json())
    return rep


def segment_dicom(pred: Predictor, folder: Path, dest: Path, chunk_slices: int = 32, dicom_seg: bool = False) -> int:
    """Segment one DICOM CT series folder, reading ``chunk_slices`` files at a time (int16 HU chunks;
    the uint8 labels are collected, 1 byte per voxel). With ``dicom_seg`` also writes
    ``<dest stem>.dcm``, a DICOM SEG referencing the source slices."""
    from styleseg.io.dicom import read_ct_series, scan_dicom, slice_geometry
    from styleseg.io.volume import Volume, write_nifti

    series = scan_dicom([folder]).ct_series()
    if len(series) != 1:
        raise InputError(folder, f"holds {len(series)} CT series; expected exactly one",
                         "pass one folder per series")
    headers, geom = slice_geometry(next(iter(series.values())))
    flips = pred.check_geometry(geom["spacing"], geom["direction"], folder)
    first = headers[0].ds
    lab = np.zeros((len(headers), int(first.Rows), int(first.Columns)), np.uint8)
    chunks = (to_canonical(read_ct_series(headers[z0:z0 + chunk_slices]).array, flips)
              for z0 in range(0, len(headers), chunk_slices))
    z0 = 0
    for chunk_lab in pred.predict_chunks(chunks):
        lab[z0:z0 + chunk_lab.shape[0]] = to_canonical(chunk_lab, flips)
        z0 += chunk_lab.shape[0]
    vol = Volume(lab, geom["spacing"], geom["origin"], geom["direction"])
    if dicom_seg:  # before the NIfTI, whose existence is what --continue trusts
        from styleseg.io.rtstruct import write_seg
        from styleseg.labels import LabelSchema

        write_seg(vol, LabelSchema.from_labels_dict(pred.labels), [str(h.path) for h in headers],
                  dest.with_name(dest.name.replace(".nii.gz", ".dcm")))
    write_nifti(vol, dest, np.uint8)
    return len(headers)


def segment_nifti_streaming(pred: Predictor, path: Path, dest: Path, chunk_slices: int = 32) -> int:
    """Segment a NIfTI CT file a chunk of slices at a time, with bounded memory (see :mod:`styleseg.io.
    nifti_stream`); the labels lie exactly on the input grid and appear at ``dest`` only when complete."""
    from styleseg.io.integrity import check_finite
    from styleseg.io.nifti_stream import NiftiSliceReader, write_label_stream

    reader = NiftiSliceReader(path)
    flips = pred.check_geometry(reader.spacing, reader.direction, path)

    def checked(chunk: np.ndarray) -> np.ndarray:
        check_finite(chunk, path)  # a NaN voxel would reach the network as a number
        return to_canonical(chunk, flips)

    canonical = (checked(c) for c in reader.chunks(chunk_slices))
    labels = (to_canonical(lab, flips) for lab in pred.predict_chunks(canonical))
    return write_label_stream(reader, dest, labels)
