"""``styleseg segment``: a collection of CT volumes -> one label volume per case on its own grid.

Inputs are discovered (NIfTI files, DICOM folders, dataset folders), sorted by case id and sharded
(``part_id`` of ``num_parts``); each case is streamed through the :class:`~styleseg.seg.predict.Predictor`
a chunk of slices at a time and written atomically, so ``continue_`` can trust any output that exists.
A bad case is logged and recorded in the report; the others still run. A progress bar with ETA counts cases.

DICOM folders are indexed by :func:`styleseg.io.series.discover_series`: localizers, secondary captures and
structure sets beside the slices are left out, a folder holding one CT series is one case named after the
folder, a folder (tree) holding several is one case per series (the series' case ids). With ``dicom_seg`` a
DICOM SEG referencing the source slices is written beside the NIfTI for DICOM inputs and for dataset cases
imported from DICOM (their ``source_files`` extras), if those files are still there.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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


class InputCase(NamedTuple):
    """One case to segment: its id, where it is, ``kind`` "nifti" or "dicom", and for DICOM the slice files
    in slice order (for a DICOM input what is read; for a dataset case imported from DICOM what a SEG refers to)."""

    case_id: str
    path: Path
    kind: str
    dicom_files: tuple[str, ...] = ()


def _dicom_cases(folder: Path) -> list[InputCase]:
    from styleseg.io.dicom import scan_dicom
    from styleseg.io.series import discover_series

    index = discover_series(scan_dicom([folder], skip_bad=True))
    if not index.series:
        why = "; ".join(s.describe() for s in index.skipped[:3])
        raise InputError(folder, "holds no axial CT series to segment" + (f" ({why})" if why else ""),
                         "pass a folder of CT slices (or a NIfTI file / dataset folder)")
    if len(index.series) == 1:
        return [InputCase(folder.name, folder, "dicom", tuple(index.series[0].files))]
    return [InputCase(s.case_id, s.folder, "dicom", tuple(s.files)) for s in index.series]


def _dataset_cases(root: Path) -> list[InputCase]:
    from styleseg.io.dataset import Dataset

    ds = Dataset(root)
    out = []
    for c in ds.cases:
        files = c.extras.get("source_files") if c.extras.get("source") == "dicom" else None
        out.append(InputCase(c.case_id, ds.image_path(c.case_id), "nifti",
                             tuple(str(f) for f in files) if isinstance(files, list) else ()))
    return out


def discover_inputs(inputs: Sequence[Path]) -> list[InputCase]:
    """The cases of NIfTI files, DICOM folders (one case per axial CT series, see the module docstring) and
    dataset folders, sorted by case id; duplicate ids raise InputError."""
    from styleseg.io.volume import is_nifti

    found: list[InputCase] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise InputError(p, "input does not exist", "check the path")
        if p.is_file() and is_nifti(p):
            name = p.name[: -len(".nii.gz")] if p.name.lower().endswith(".nii.gz") else p.stem
            found.append(InputCase(name[:-5] if name.endswith("_0000") else name, p, "nifti"))
        elif p.is_dir() and (p / "dataset.json").exists():
            found += _dataset_cases(p)
        elif p.is_dir():
            found += _dicom_cases(p)
        else:
            raise InputError(p, "not a NIfTI file, DICOM series folder or dataset folder",
                             "pass .nii/.nii.gz files, a folder of DICOM slices, or a dataset folder")
    found.sort(key=lambda t: t.case_id)
    ids = [f.case_id for f in found]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(None, f"several inputs map to the same case id(s) {dup}", "rename the inputs")
    return found


def segment(inputs: Sequence[Path], model: Path, out: Path, continue_: bool = False, part_id: int = 0,
            num_parts: int = 1, dicom_seg: bool = False, device: str = "auto", batch_size: int = 8,
            dtype: str = "float32", channels_last: bool = False, force_spacing: bool = False,
            chunk_slices: int = 32, allow_incomplete: bool = False, resample: bool = True,
            progress: bool = True, crop: bool = True) -> SegmentReport:
    """Segment every case of ``inputs`` into ``out/<case>.nii.gz`` (uint8 labels on the input grid).

    Cases are sorted by id and this call does those with ``index % num_parts == part_id``;
    ``continue_`` skips cases whose output exists (outputs are atomic, so an existing one is complete).
    NIfTI input is streamed ``chunk_slices`` slices at a time and the output is written as it is produced.
    ``resample``: slices off the model's training spacing are resampled to it for the network
    (:class:`~styleseg.seg.predict.Predictor`). ``progress``: a progress bar with ETA (rich) while it runs.
    ``crop``: the network sees the box around the body only (the Predictor's default); False: whole slices.
    """
    from styleseg.io.atomic import write_json

    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ConfigError(f"--part-id {part_id} must be in [0, --num-parts {num_parts}) and --num-parts >= 1")
    if chunk_slices < 1:
        raise ConfigError(f"chunk_slices must be >= 1, got {chunk_slices}")
    pred = Predictor(model, device=device, batch_size=batch_size, dtype=dtype, channels_last=channels_last,
                     force_spacing=force_spacing, allow_incomplete=allow_incomplete, resample=resample, crop=crop)
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
    no_seg = [c.case_id for c in mine if dicom_seg and c.kind == "nifti" and not c.dicom_files]
    if no_seg:  # once per call: a mixed archive can hold thousands of NIfTI cases
        log.warning("%d NIfTI case(s) without DICOM slices get no DICOM SEG (it references its source slices), "
                    "NIfTI labels only: %s%s", len(no_seg), ", ".join(no_seg[:5]), ", ..." if len(no_seg) > 5 else "")
    t0 = time.perf_counter()
    with _bar(progress, len(mine), f"segmenting (part {part_id + 1}/{num_parts})" if num_parts > 1
              else "segmenting") as advance:
        for case in mine:
            _one(pred, case, out, continue_, dicom_seg, chunk_slices, rep)
            advance()
    rep.seconds = time.perf_counter() - t0
    name = "segment_report.json" if num_parts == 1 else f"segment_report.part{part_id}.json"
    write_json(out / name, rep.to_json())
    return rep


def _one(pred: Predictor, case: InputCase, out: Path, continue_: bool, dicom_seg: bool, chunk_slices: int,
         rep: SegmentReport) -> None:
    """Segment one case into ``rep`` (done, skipped or failed with the reason)."""
    dest = out / f"{case.case_id}.nii.gz"
    if continue_ and dest.exists():
        rep.skipped.append(case.case_id)
        return
    try:
        if case.kind == "nifti":
            seg_files = case.dicom_files if dicom_seg else ()
            rep.slices += segment_nifti_streaming(pred, case.path, dest, chunk_slices, seg_files)
        else:
            rep.slices += segment_dicom(pred, case.path, dest, chunk_slices, dicom_seg, case.dicom_files or None)
        rep.done.append(case.case_id)
        log.debug("segmented %s -> %s", case.case_id, dest)
    except OSError as e:
        if e.errno in OUTPUT_ERRNOS:  # the output side is broken: every further case would fail the same way
            from styleseg.io.atomic import output_error

            raise output_error(dest, e) from e
        rep.failed[case.case_id] = str(e)
        log.error("skipped %s: %s", case.case_id, e)
    except InputError as e:
        if e.problem.startswith("cannot write"):  # the output side is broken, see above
            raise
        rep.failed[case.case_id] = str(e)
        log.error("skipped %s: %s", case.case_id, e)
    except (ValueError, EOFError, RuntimeError) as e:
        rep.failed[case.case_id] = str(e)
        log.error("skipped %s: %s", case.case_id, e)


@contextmanager
def _bar(show: bool, total: int, what: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar over ``total`` cases with elapsed time and ETA; yields ``advance()``."""
    if not show:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def segment_dicom(pred: Predictor, folder: Path, dest: Path, chunk_slices: int = 32, dicom_seg: bool = False,
                  files: Sequence[str] | None = None) -> int:
    """Segment one DICOM CT series, reading ``chunk_slices`` files at a time (int16 HU chunks; the uint8 labels
    are collected, 1 byte per voxel). ``files``: the series' slice files (default: the one axial CT series
    :func:`~styleseg.io.series.discover_series` finds in ``folder``, localizers and other series left out).
    With ``dicom_seg`` also writes ``<dest stem>.dcm``, a DICOM SEG referencing the source slices."""
    from styleseg.io.dicom import read_ct_series, read_header, slice_geometry
    from styleseg.io.volume import Volume, write_nifti

    if files is None:
        found = _dicom_cases(folder)
        if len(found) != 1:
            raise InputError(folder, f"holds {len(found)} CT series; expected exactly one",
                             "pass one folder per series, or the whole tree to `segment`")
        files = found[0].dicom_files
    headers, geom = slice_geometry([h for h in (read_header(Path(f)) for f in files) if h is not None])
    flips = pred.check_geometry(geom["spacing"], geom["direction"], folder)
    first = headers[0].ds
    lab = np.zeros((len(headers), int(first.Rows), int(first.Columns)), np.uint8)
    chunks = (to_canonical(read_ct_series(headers[z0:z0 + chunk_slices]).array, flips)
              for z0 in range(0, len(headers), chunk_slices))
    z0 = 0
    for chunk_lab in pred.predict_chunks(chunks, geom["spacing"][:2]):
        lab[z0:z0 + chunk_lab.shape[0]] = to_canonical(chunk_lab, flips)
        z0 += chunk_lab.shape[0]
    vol = Volume(lab, geom["spacing"], geom["origin"], geom["direction"])
    if dicom_seg:  # before the NIfTI, whose existence is what --continue trusts
        _write_seg(pred, vol, [str(h.path) for h in headers], dest)
    write_nifti(vol, dest, np.uint8)
    return len(headers)


def _write_seg(pred: Predictor, vol: Any, files: Sequence[str], dest: Path) -> None:
    from styleseg.io.rtstruct import write_seg
    from styleseg.labels import LabelSchema

    write_seg(vol, LabelSchema.from_labels_dict(pred.labels), list(files), seg_path(dest))


def seg_path(dest: Path) -> Path:
    """Where the DICOM SEG of the NIfTI output ``dest`` goes: ``<case>.dcm`` beside ``<case>.nii.gz``."""
    return dest.with_name(dest.name.replace(".nii.gz", ".dcm"))


def segment_nifti_streaming(pred: Predictor, path: Path, dest: Path, chunk_slices: int = 32,
                            dicom_files: Sequence[str] = ()) -> int:
    """Segment a NIfTI CT file a chunk of slices at a time, with bounded memory (see :mod:`styleseg.io.
    nifti_stream`); the labels lie exactly on the input grid and appear at ``dest`` only when complete.
    ``dicom_files``: the DICOM slices the NIfTI was imported from; a DICOM SEG referencing them is written
    too (before the NIfTI, whose existence is what ``continue_`` trusts)."""
    from styleseg.io.integrity import check_finite
    from styleseg.io.nifti_stream import NiftiSliceReader, write_label_stream

    reader = NiftiSliceReader(path)
    flips = pred.check_geometry(reader.spacing, reader.direction, path)

    def checked(chunk: np.ndarray) -> np.ndarray:
        check_finite(chunk, path)  # a NaN voxel would reach the network as a number
        return to_canonical(chunk, flips)

    canonical = (checked(c) for c in reader.chunks(chunk_slices))
    labels = (to_canonical(lab, flips) for lab in pred.predict_chunks(canonical, reader.spacing[:2]))
    if not dicom_files:
        return write_label_stream(reader, dest, labels)
    from styleseg.io.volume import Volume

    missing = [f for f in dicom_files if not Path(f).exists()]
    if missing:
        raise InputError(Path(missing[0]), f"DICOM source of {dest.name} is gone ({len(missing)} of "
                         f"{len(dicom_files)} slice files missing), so no DICOM SEG can reference it",
                         "restore the DICOM files, or segment without DICOM SEG")
    lab = np.concatenate(list(labels))
    if len(reader.spacing) != 3:
        raise InputError(path, "a DICOM SEG needs a 3D image grid", "segment without DICOM SEG")
    vol = Volume(lab, reader.spacing, reader.origin, reader.direction)  # type: ignore[arg-type]
    _write_seg(pred, vol, dicom_files, dest)
    return write_label_stream(reader, dest, iter([lab]))
