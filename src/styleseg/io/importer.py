"""``styleseg import``: DICOM series (+ RTSTRUCT / DICOM SEG) and NIfTI pairs -> one dataset folder.

Sources are discovered first (DICOM headers only, NIfTI pairs by name), every reference is resolved and
every bad input is found *before* the first volume is written; the dataset is then written through
:class:`~styleseg.io.dataset.DatasetWriter`, which renames a complete folder into place or leaves
nothing. With ``skip_bad`` bad inputs are listed in the :class:`ImportReport` instead of raising.

DICOM cases are the series :func:`styleseg.io.series.discover_series` keeps (one case per axial CT
series; localizers, reformats, secondary captures and series that do not form a regular grid are left
out and listed in ``ImportReport.skipped`` / ``notes``), so a tree without RTSTRUCTs becomes an
unlabelled dataset with one case per series.

Case extras in dataset.json: ``source_files`` (DICOM: the CT slice files in slice order, what
:func:`styleseg.io.rtstruct.write_seg` takes), ``series`` (DICOM: Study/Series/FrameOfReference UIDs,
SeriesNumber, SeriesDescription, ``n_slices`` and the ordered ``sop_instance_uids``),
``structure_files`` (RTSTRUCT/SEG files used), ``source`` ("dicom" | "nifti"), ``scanner`` (DICOM tags,
see :func:`styleseg.io.dicom_tags.scanner_tags`), ``rois`` (raw ROI name -> structure or null), ``notes``.
``annotated`` lists the structures found (contoured / labelled); when the schema has ``body`` and a
labelled case has no body contour, body is derived from the image (:func:`styleseg.labels.add_body`)
and listed in both ``derived`` and ``annotated``. Unlabelled cases get no label file (no derived body):
they are target data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.errors import InputError
from styleseg.io.atomic import check_output_folder
from styleseg.io.dataset import DatasetWriter, safe_case_id
from styleseg.io.dicom import SKIP_NOT_CT, DicomHeader, DicomScan, iter_files, read_ct_series, scan_dicom
from styleseg.io.integrity import check_hounsfield
from styleseg.io.nifti_pairs import NiftiCase, apply_cases_json, find_nifti, strip_nii
from styleseg.io.rtstruct import MaskSet, rasterise_rtstruct, read_seg, rtstruct_references, seg_references
from styleseg.io.series import CTSeries, discover_series
from styleseg.io.volume import Volume, check_same_grid, read_nifti
from styleseg.labels import LabelSchema, add_body

log = logging.getLogger("styleseg.io.importer")

Source = Path | str | tuple[Path | str, Path | str | None]


@dataclass
class ImportedCase:
    case_id: str
    source: str  # "dicom" or "nifti"
    shape: tuple[int, int, int]
    annotated: tuple[str, ...]
    derived: tuple[str, ...]
    files: int


@dataclass
class ImportReport:
    """What an import wrote and what it left out (and why)."""

    out: Path
    cases: list[ImportedCase] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: list[str] = field(default_factory=list)  # non-DICOM, non-NIfTI files
    notes: list[str] = field(default_factory=list)


@dataclass
class _DicomCase:
    case_id: str
    ct: list[DicomHeader]  # sorted along the slice normal
    structs: list[DicomHeader] = field(default_factory=list)  # RTSTRUCT and SEG headers
    series: CTSeries | None = None


def load_structure_map(path: str | Path | None) -> dict[str, str] | None:
    """Read MAP.toml: a ``[structures]`` table of raw ROI name = schema structure name."""
    if path is None:
        return None
    from styleseg.config import load_toml

    data = load_toml(Path(path))
    table = data.get("structures", data)
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise InputError(path, "expected a [structures] table of ROI name = structure name strings",
                         'write a [structures] table with lines like "LUNG_TOTAL_L" = "lung_left"')
    return {str(k): v for k, v in table.items()}


def _match_struct(h: DicomHeader, series: Mapping[str, list[DicomHeader]], kept: set[str]) -> str | None:
    """The CT series an RTSTRUCT/SEG refers to: by image instances, then series UID (among every CT series
    found, kept or left out), then by a Frame of Reference that exactly one kept series has."""
    refs = rtstruct_references(h.ds) if h.kind == "rtstruct" else seg_references(h.ds)
    if refs.sop_uids:
        for uid, hs in series.items():
            if refs.sop_uids & {x.sop_instance_uid for x in hs}:
                return uid
    for uid in refs.series_uids:
        if uid in series:
            return uid
    same_for = [uid for uid in kept if refs.frame_of_reference_uid
                and series[uid][0].frame_of_reference_uid == refs.frame_of_reference_uid]
    if len(same_for) == 1:
        return same_for[0]
    return None


def _dicom_cases(scan: DicomScan, report: ImportReport, skip_bad: bool) -> list[_DicomCase]:
    """One case per CT series :func:`discover_series` keeps, with the RTSTRUCTs/SEGs that refer to it.

    Series left out (localizers, oblique, missing slices, ...) are listed in ``report.skipped`` and non-CT
    series in ``report.notes``. A structure set whose series was left out is an error (its annotation
    would be lost silently), or is skipped and listed with ``skip_bad``.
    """
    index = discover_series(scan)
    left_out = {s.series_uid: s for s in index.skipped}
    for sk in index.skipped:
        if sk.reason == SKIP_NOT_CT:
            report.notes.append(f"{sk.folder}: {sk.describe()} (CT, RTSTRUCT and SEG are imported)")
        else:
            report.skipped.append((str(sk.folder), sk.describe()))
    cases = {s.series_uid: _DicomCase(s.case_id, s.headers, series=s) for s in index.series}
    raw = scan.ct_series()
    for h in scan.of_kind("rtstruct") + scan.of_kind("seg"):
        uid = _match_struct(h, raw, set(cases))
        if uid in cases:
            cases[uid].structs.append(h)
            continue
        if uid in left_out:
            sk = left_out[uid]
            err = InputError(h.path, f"{h.kind.upper()} refers to the CT series in {sk.folder}, which was left out "
                             f"({sk.reason}: {sk.detail})", "fix that series (see the reason), or use --skip-bad")
        else:
            refs = rtstruct_references(h.ds) if h.kind == "rtstruct" else seg_references(h.ds)
            err = InputError(h.path, f"{h.kind.upper()} references CT series {sorted(refs.series_uids) or '?'} "
                             f"(frame of reference {refs.frame_of_reference_uid}), which is not among the inputs",
                             "add the CT series folder to the SOURCE list, or use --skip-bad")
        if not skip_bad:
            raise err
        log.warning("skipping %s", err)
        report.skipped.append((str(h.path), err.problem))
    return list(cases.values())


def _finish_label(case_id: str, image: Volume, label: np.ndarray, annotated: list[str], schema: LabelSchema,
                  derive_body: bool) -> tuple[np.ndarray, list[str], list[str]]:
    derived: list[str] = []
    if derive_body and "body" in schema.names and "body" not in annotated:
        label = add_body(label, image.array, schema)
        derived.append("body")
        annotated = [*annotated, "body"]
        log.debug("%s: body derived from the image", case_id)
    order = {n: i for i, n in enumerate(schema.names)}
    return label, sorted(set(annotated), key=order.__getitem__), derived


def _write_dicom_case(w: DatasetWriter, c: _DicomCase, schema: LabelSchema, structure_map: Mapping[str, str] | None,
                      derive_body: bool, report: ImportReport, allow_unusual_hu: bool = False) -> None:
    import pydicom

    image = read_ct_series(c.ct)
    if not allow_unusual_hu:
        ds0 = c.ct[0].ds
        check_hounsfield(image.array, image.spacing[:2], c.ct[0].path.parent,
                         f"series has RescaleSlope {ds0.get('RescaleSlope', '(none)')}, RescaleIntercept "
                         f"{ds0.get('RescaleIntercept', '(none)')}: is the rescale missing or wrong?")
    masks = MaskSet()
    for h in c.structs:
        if h.kind == "rtstruct":
            masks.merge(rasterise_rtstruct(h.ds, image, schema, structure_map, h.path))
        else:
            try:
                ds = pydicom.dcmread(h.path)
            except Exception as e:  # noqa: BLE001
                raise InputError(h.path, f"cannot read DICOM SEG ({e})", "re-export it, or use --skip-bad") from e
            masks.merge(read_seg(ds, image, schema, structure_map, h.path))
    extras: dict[str, Any] = {
        "source": "dicom", "scanner": image.tags["scanner"], "source_files": image.tags["source_files"],
        "SeriesInstanceUID": image.tags["SeriesInstanceUID"], "PatientID": image.tags["PatientID"],
    }
    if c.series is not None:
        extras["series"] = c.series.reference()
    if c.structs:
        extras["structure_files"] = [str(h.path) for h in c.structs]
    notes = list(c.series.notes) if c.series is not None else []
    label_vol = None
    annotated: list[str] = []
    derived: list[str] = []
    if c.structs:
        annotated = [n for n, m in masks.masks.items() if m.any()]
        label = schema.compose({n: masks.masks[n] for n in annotated}, image.shape)
        label, annotated, derived = _finish_label(c.case_id, image, label, annotated, schema, derive_body)
        label_vol = image.with_array(label)
        extras["rois"] = masks.rois
        notes += masks.notes
    if notes:
        extras["notes"] = notes
    w.add_case(c.case_id, image, label_vol, annotated=annotated if label_vol is not None else None,
               derived=derived, **extras)
    report.cases.append(ImportedCase(c.case_id, "dicom", image.shape, tuple(annotated), tuple(derived),
                                     len(extras["source_files"]) + len(c.structs)))


def _write_nifti_case(w: DatasetWriter, c: NiftiCase, schema: LabelSchema, remap: dict[int, int] | None,
                      derive_body: bool, report: ImportReport, allow_unusual_hu: bool = False) -> None:
    image = read_nifti(c.image, require_3d=True)
    if not allow_unusual_hu:
        check_hounsfield(image.array, image.spacing[:2], c.image,
                         "values may be stored values without RescaleSlope/RescaleIntercept applied")
    label_vol = None
    annotated: list[str] = []
    derived: list[str] = []
    extras: dict[str, Any] = {"source": "nifti", "source_files": [str(c.image)] + ([str(c.label)] if c.label else [])}
    if c.label is not None:
        lab = read_nifti(c.label, require_3d=True)
        check_same_grid(image, lab, c.label)
        arr = np.asarray(lab.array)
        if remap:
            out = np.zeros(arr.shape, np.uint8)
            for src, dst in remap.items():
                out[arr == src] = dst
            unknown = sorted(set(np.unique(arr).tolist()) - set(remap) - {0})
            if unknown:
                raise InputError(c.label, f"label values {unknown} are not listed in the cases JSON labels",
                                 "add them to its 'labels' table")
            arr = out
        schema.check_label_values(arr, str(c.label))
        arr = arr.astype(np.uint8)
        present = [n for n, v in schema.structures if np.any(arr == v)]
        annotated = list(c.annotated) if c.annotated is not None else present
        bad = sorted(set(annotated) - set(schema.names))
        if bad:
            raise InputError(c.label, f"cases JSON lists structures {bad} that are not in the label schema")
        arr, annotated, derived = _finish_label(c.case_id, image, arr, annotated, schema, derive_body)
        label_vol = image.with_array(arr)
    w.add_case(c.case_id, image, label_vol, annotated=annotated if label_vol is not None else None,
               derived=derived, **extras)
    report.cases.append(ImportedCase(c.case_id, "nifti", image.shape, tuple(annotated), tuple(derived),
                                     len(extras["source_files"])))


def import_sources(sources: Sequence[Source], out: str | Path, schema: LabelSchema | None = None,
                   structure_map: Mapping[str, str] | None = None, skip_bad: bool = False, derive_body: bool = True,
                   name: str | None = None, cases_json: str | Path | None = None,
                   overwrite: bool = False, allow_unusual_hu: bool = False) -> ImportReport:
    """Import DICOM folder trees (CT + RTSTRUCT/SEG) and NIfTI pairs into a dataset folder at ``out``.

    ``sources``: folders or files; a ``(image, label)`` tuple is an explicit NIfTI pair (label may be
    None). ``structure_map``: raw ROI name -> schema structure (MAP.toml ``[structures]``).
    ``cases_json``: per-case annotated structures for NIfTI cases (default: a ``cases.json`` beside
    the NIfTI files if present). Raises InputError naming the file for bad input unless ``skip_bad``.
    ``allow_unusual_hu``: accept CT that does not look like Hounsfield units (see
    :func:`styleseg.io.integrity.check_hounsfield`; by default such a case is bad input).
    """
    schema = schema or LabelSchema.default()
    out = Path(out)
    check_output_folder(out, [s for s in sources if not isinstance(s, tuple)])
    report = ImportReport(out)
    if not sources:
        raise InputError(None, "no SOURCE given", "pass DICOM folders or NIfTI files")
    paths, pairs = _split_sources(sources)
    files = iter_files(paths)
    claimed = find_nifti(files, pairs)
    scan = scan_dicom(paths, skip_bad=skip_bad)
    report.skipped.extend((str(f), why) for f, why in scan.bad)
    report.ignored.extend(str(f) for f in scan.ignored if f not in claimed and not f.name.endswith((".json", ".toml")))

    remap = apply_cases_json(pairs, cases_json, schema)

    kept = _clean_series(_dicom_cases(scan, report, skip_bad), scan, report)
    if not kept and not pairs:
        where = paths[0] if len(paths) == 1 else None
        raise InputError(where, f"no CT series or NIfTI image found in {', '.join(map(str, paths))} "
                         f"({len(report.ignored)} non-DICOM files ignored, {len(report.skipped)} bad or left out"
                         + "".join(f"; {p}: {r}" for p, r in report.skipped[:3]) + ")",
                         "point SOURCE at DICOM CT folders or NIfTI images (X_ct.nii.gz [+ X_labels.nii.gz])")
    _check_case_ids(kept, pairs)

    meta = {"sources": [str(p) for p in paths] + [str(c.image) for c in pairs if c.image not in claimed],
            "importer": "styleseg import"}
    with DatasetWriter(out, name or out.name, schema, meta=meta, overwrite=overwrite) as w:
        for c in kept:
            _guard(lambda c=c: _write_dicom_case(w, c, schema, structure_map, derive_body, report, allow_unusual_hu),
                   c.ct[0].path.parent, skip_bad, report)
        for c in pairs:
            _guard(lambda c=c: _write_nifti_case(w, c, schema, remap, derive_body, report, allow_unusual_hu),
                   c.image, skip_bad, report)
        if not w.records:
            raise InputError(None, "every case was bad; nothing was imported: "
                             + "; ".join(f"{p}: {r}" for p, r in report.skipped), "fix the inputs listed")
        w.meta["skipped"] = [{"path": p, "reason": r} for p, r in report.skipped]
    log.info("imported %d cases into %s (%d skipped)", len(report.cases), out, len(report.skipped))
    return report


def _split_sources(sources: Sequence[Source]) -> tuple[list[Path], list[NiftiCase]]:
    """Folders and files to scan, and the explicit (image, label) NIfTI pairs; a missing path is bad input."""
    paths: list[Path] = []
    pairs: list[NiftiCase] = []
    for s in sources:
        if isinstance(s, tuple):
            img, lab = Path(s[0]), (Path(s[1]) if s[1] is not None else None)
            for p in (img, lab):
                if p is not None and not p.exists():
                    raise InputError(p, "does not exist", "check the path")
            pairs.append(NiftiCase(strip_nii(img.name).removesuffix("_ct"), img, lab))
            continue
        p = Path(s)
        if not p.exists():
            raise InputError(p, "does not exist", "check the path")
        if p.is_dir() and not any(f.is_file() for f in p.rglob("*")):
            raise InputError(p, "folder is empty (no files below it)", "point SOURCE at the folder holding the data")
        paths.append(p)
    return paths, pairs


def _clean_series(cases: Sequence[_DicomCase], scan: DicomScan, report: ImportReport) -> list[_DicomCase]:
    """The DICOM cases to import: a series beside a bad file is skipped as a whole (the bad file may be one of
    its slices, its header unreadable, and a gap would silently distort the volume)."""
    bad_dirs = {Path(f).parent for f, _ in scan.bad}
    kept: list[_DicomCase] = []
    for c in cases:
        if bad_dirs & {h.path.parent for h in c.ct}:
            report.skipped.append((str(c.ct[0].path.parent), f"CT series of case {c.case_id} is in a folder with a "
                                   "bad file (possibly one of its slices)"))
            report.skipped.extend((str(h.path), f"its CT series (case {c.case_id}) was skipped") for h in c.structs)
        else:
            kept.append(c)
    return kept


def _check_case_ids(dicom: Sequence[_DicomCase], nifti: Sequence[NiftiCase]) -> None:
    """Every case gets its own id: two sources whose names become one id ("a b", "a_b") are bad input."""
    owner: dict[str, tuple[str, Path]] = {}
    for raw, where in [(c.case_id, c.ct[0].path.parent) for c in dicom] + [(c.case_id, c.image) for c in nifti]:
        cid = safe_case_id(raw)
        if cid in owner:
            first, first_at = owner[cid]
            same = f"both named {raw!r}" if first == raw else f"named {first!r} and {raw!r}"
            raise InputError(where, f"two cases, {same}, both become case id {cid!r} (the other is {first_at})",
                             "rename one of them, or import them into separate datasets")
        owner[cid] = (raw, where)


def _guard(fn: Any, where: Path, skip_bad: bool, report: ImportReport) -> None:
    """Run one case's import; with skip_bad an InputError skips the case instead of aborting."""
    try:
        fn()
    except InputError as e:
        if not skip_bad:
            raise
        log.warning("skipping %s", e)
        report.skipped.append((str(e.path or where), e.problem))
