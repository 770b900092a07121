"""DICOM discovery and CT series reading: headers, slice order, HU rescale, geometry, scanner tags.

Discovery reads headers only (``pydicom.dcmread(stop_before_pixels=True)``), so a folder tree of
thousands of files is indexed in seconds; pixels are read per series when the series is imported.

What counts as bad input (DICOM PS3.3 C.7.6.2 image plane, C.11.1 modality LUT):
- a file with the ``DICM`` magic that cannot be parsed, a CT image without a PixelData element, or
  one whose pixel data is shorter than ``Rows x Columns x BitsAllocated/8`` (truncated) ->
  :class:`InputError` naming the file;
- a file named ``*.dcm``/``*.dicom``/``*.ima`` that is not DICOM -> :class:`InputError` (it claims to
  be DICOM); any other non-DICOM file (README, DICOMDIR-less notes, .DS_Store, JSON) is ignored
  quietly and listed in :attr:`DicomScan.ignored`;
- a CT series with mixed orientations or sizes, duplicate slice positions or uneven slice spacing
  (a missing slice) -> :class:`InputError` naming the series folder: placing such slices on a
  regular grid would silently distort the anatomy.

Geometry follows SimpleITK: origin = ImagePositionPatient of the first slice along the slice normal
``n = row x col`` (ImageOrientationPatient), direction columns (row, col, n) in LPS, spacing
(PixelSpacing[1], PixelSpacing[0], slice step). HU = stored * RescaleSlope + RescaleIntercept;
stored values equal to PixelPaddingValue (outside the reconstruction circle, e.g. GE's -2000) are set
to -1024 HU (air) so windows and texture statistics are not skewed by a -3024 HU ring.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.errors import InputError
from styleseg.io.dicom_tags import scanner_tags
from styleseg.io.volume import Volume

log = logging.getLogger("styleseg.io.dicom")

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PADDING_HU = -1024
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_SKIP_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db"}
_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010), little and big endian

# Why :func:`discover_series` leaves a series out (``SkippedSeries.reason``). A localizer (scout,
# topogram, surview) is a projection radiograph, not a slice; a non-axial or oblique series is not what
# the models are trained on; the others cannot be placed on one regular grid without distorting anatomy.
SKIP_NOT_CT = "not a CT image series"
SKIP_LOCALIZER = "localizer"
SKIP_NOT_AXIAL = "not axial"
SKIP_OBLIQUE = "oblique"
SKIP_SHEARED = "sheared"
SKIP_MIXED_ORIENTATION = "mixed orientation"
SKIP_MIXED_SIZE = "mixed size"
SKIP_SPACING = "inconsistent spacing"
SKIP_MISSING = "missing slices"
SKIP_DUPLICATE = "duplicate positions"
#: ImageType values (DICOM PS3.3 C.8.2.1.1.1, value 3, and vendor synonyms) that mark a localizer image.
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW"})
#: A series counts as axial when its slice normal is within this angle (degrees) of the patient's z axis:
#: patient-positioning obliquity of a few degrees is normal; a tilted gantry (often 10-30 deg) or a
#: reformat is not an axial slice.
AXIAL_MAX_TILT_DEG = 5.0
#: A stack whose first-to-last ImagePositionPatient drifts sideways by more than this share of its
#: length (0.01 = 0.57 deg) is sheared (gantry tilt) and is not a regular grid.
SHEAR_TOLERANCE = 0.01


@dataclass
class DicomHeader:
    """One DICOM file's header (no pixel data) and the identifiers used to group files."""

    path: Path
    ds: Any  # pydicom.Dataset without pixel data
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str | None
    patient_id: str

    @property
    def kind(self) -> str:
        """'ct' (a single-frame CT Image Storage instance), 'rtstruct', 'seg' or 'other'.

        Modality alone is not enough: secondary captures (dose screens, key images) and enhanced
        multi-frame CT also carry Modality CT, but they are not slices of a CT series.
        """
        if self.sop_class_uid == RTSTRUCT_STORAGE or self.modality == "RTSTRUCT":
            return "rtstruct"
        if self.sop_class_uid == SEG_STORAGE or self.modality == "SEG":
            return "seg"
        if self.modality == "CT" and self.sop_class_uid in (CT_STORAGE, ""):
            return "ct"
        return "other"

    @property
    def image_type(self) -> tuple[str, ...]:
        """ImageType (0008,0008) values, upper case (e.g. ORIGINAL, PRIMARY, AXIAL or LOCALIZER)."""
        v = self.ds.get("ImageType") or ()
        return tuple(str(x).strip().upper() for x in ([v] if isinstance(v, str) else v))

    @property
    def is_localizer(self) -> bool:
        return bool(LOCALIZER_TYPES & set(self.image_type))


@dataclass
class DicomScan:
    """Result of walking SOURCE paths: DICOM headers, ignored non-DICOM files and other files."""

    headers: list[DicomHeader] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    bad: list[tuple[Path, str]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[DicomHeader]:
        return [h for h in self.headers if h.kind == kind]

    def ct_series(self) -> dict[str, list[DicomHeader]]:
        """CT slices grouped by SeriesInstanceUID (in discovery order)."""
        out: dict[str, list[DicomHeader]] = {}
        for h in self.of_kind("ct"):
            out.setdefault(h.series_uid, []).append(h)
        return out


def iter_files(paths: Iterable[Path]) -> list[Path]:
    """All regular files under ``paths`` (files as given, folders walked recursively), sorted."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
    return out


def read_header(path: Path) -> DicomHeader | None:
    """Read one file's DICOM header; None if it is not DICOM (and does not claim to be).

    Raises InputError for a corrupt or truncated DICOM file, or a ``.dcm`` file that is not DICOM.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            pixel_at = fp.tell()  # pydicom rewinds to the start of the pixel data element
    except InvalidDicomError as e:
        if path.suffix.lower() in DICOM_SUFFIXES:
            raise InputError(path, "is not a DICOM file (no 'DICM' header) although its name says so",
                             "remove it from the folder or replace it with the original file") from e
        return None
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on corrupt files
        raise InputError(path, f"truncated or corrupt DICOM file ({type(e).__name__}: {e})",
                         "re-export or re-download this file, or use --skip-bad") from e
    if "SOPInstanceUID" not in ds:
        raise InputError(path, "DICOM file without SOPInstanceUID (corrupt or truncated header)",
                         "re-export this file, or use --skip-bad")
    h = DicomHeader(
        path=path, ds=ds, modality=str(ds.get("Modality", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")), sop_instance_uid=str(ds.SOPInstanceUID),
        series_uid=str(ds.get("SeriesInstanceUID", "")), study_uid=str(ds.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(ds.FrameOfReferenceUID) if "FrameOfReferenceUID" in ds else None,
        patient_id=str(ds.get("PatientID", "") or "anonymous"),
    )
    if h.kind == "ct":
        _check_ct_header(h, pixel_at)
    return h


def _check_ct_header(h: DicomHeader, pixel_at: int) -> None:
    """Required image-plane tags present, and uncompressed pixel data not shorter than expected."""
    ds = h.ds
    missing = [t for t in ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
                           "BitsAllocated") if t not in ds]
    if missing and not h.is_localizer:  # a scout may lack slice tags: discovery leaves it out anyway
        raise InputError(h.path, f"CT image lacks required tags {missing}",
                         "re-export the series with full headers, or use --skip-bad")
    with open(h.path, "rb") as f:  # pydicom stopped at the pixel data element, or at the end: which?
        f.seek(pixel_at)
        tag = f.read(4)
    if tag not in _PIXEL_DATA_TAGS:
        raise InputError(h.path, "CT image has no PixelData element (a header-only file)",
                         "re-export the series with its pixel data, or use --skip-bad")
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if ts in _UNCOMPRESSED:
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8 * int(ds.get("SamplesPerPixel", 1))
        size = h.path.stat().st_size
        needed = pixel_at + 8 + expected  # element header (>= 8 bytes) + pixel values
        if size < needed:
            raise InputError(h.path, f"truncated DICOM file: {size} bytes, but its header and "
                             f"{ds.Rows}x{ds.Columns} pixels need at least {needed}",
                             "re-export or re-download this file, or use --skip-bad")


def scan_dicom(paths: Sequence[Path], skip_bad: bool = False) -> DicomScan:
    """Index every file under ``paths``: DICOM headers, ignored non-DICOM files, bad files.

    NIfTI and JSON files are not DICOM and are left to the caller (listed in ``ignored``).
    With ``skip_bad`` a corrupt file is listed in ``bad`` instead of raising.
    """
    scan = DicomScan()
    for f in iter_files(paths):
        if f.name in _SKIP_NAMES or f.name.lower().endswith((".nii", ".nii.gz", ".json", ".toml")):
            scan.ignored.append(f)
            continue
        try:
            h = read_header(f)
        except InputError as e:
            if not skip_bad:
                raise
            log.warning("skipping %s", e)
            scan.bad.append((f, e.problem))
            continue
        if h is None:
            log.debug("ignoring non-DICOM file %s", f)
            scan.ignored.append(f)
        else:
            scan.headers.append(h)
    return scan


def _floats(v: Any) -> list[float]:
    return [float(x) for x in v]


@dataclass(frozen=True)
class SeriesProblem:
    """Why a set of CT slices cannot be placed on one regular grid: a reason code (``SKIP_*``) and the message."""

    reason: str
    path: Path
    problem: str
    fix: str

    def error(self) -> InputError:
        return InputError(self.path, self.problem, self.fix)


def series_folder(headers: Sequence[DicomHeader]) -> Path:
    """The folder holding a series' files (their common parent when they are spread out)."""
    parents = {str(h.path.parent) for h in headers}
    return Path(parents.pop()) if len(parents) == 1 else Path(os.path.commonpath(sorted(parents)))


def check_series(headers: Sequence[DicomHeader]) -> tuple[list[DicomHeader], dict[str, Any]] | SeriesProblem:
    """Sort CT slices along their normal and derive the grid, or say why they do not form one.

    The slices must share orientation, size and pixel spacing, sit at distinct positions evenly spaced
    along the normal ``n = row x col`` (a regular step, within 1 %), and be stacked along ``n`` itself: a
    stack that drifts sideways (gantry tilt, > :data:`SHEAR_TOLERANCE` of its length) is sheared, and a
    grid with an orthogonal direction matrix would misplace it. Uneven steps that are whole multiples of
    the regular step are reported as missing slices.
    """
    where = series_folder(headers)
    ds0 = headers[0].ds
    iop = np.array(_floats(ds0.ImageOrientationPatient))
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ps = _floats(ds0.PixelSpacing)
    for h in headers[1:]:
        if not np.allclose(_floats(h.ds.ImageOrientationPatient), iop, atol=1e-4):
            return SeriesProblem(SKIP_MIXED_ORIENTATION, h.path, "slice orientation differs from the rest of its "
                                 f"series ({list(h.ds.ImageOrientationPatient)} vs {list(iop)})",
                                 "split the series, or import the files separately")
        if (h.ds.Rows, h.ds.Columns) != (ds0.Rows, ds0.Columns):
            return SeriesProblem(SKIP_MIXED_SIZE, h.path, f"slice size {h.ds.Rows}x{h.ds.Columns} differs from the "
                                 f"series' {ds0.Rows}x{ds0.Columns}", "split the series, or use --skip-bad")
        if not np.allclose(_floats(h.ds.PixelSpacing), ps, atol=1e-4):
            return SeriesProblem(SKIP_SPACING, h.path, f"pixel spacing {list(h.ds.PixelSpacing)} differs from the "
                                 f"series' {ps}", "split the series, or use --skip-bad")
    ipp = np.array([_floats(h.ds.ImagePositionPatient) for h in headers])
    pos = ipp @ normal
    order = np.argsort(pos, kind="stable")
    headers = [headers[i] for i in order]
    ipp, pos = ipp[order], pos[order]
    if len(headers) > 1:
        d = np.diff(pos)
        if np.any(d < 1e-3):
            i = int(np.argmin(d))
            return SeriesProblem(SKIP_DUPLICATE, where, f"two slices at the same position {pos[i]:.2f} mm "
                                 f"({headers[i].path.name}, {headers[i + 1].path.name}): the series holds more than "
                                 "one volume", "separate the acquisitions into their own folders, or use --skip-bad")
        step = float(np.median(d))
        if np.max(np.abs(d - step)) > max(0.01 * step, 0.01):
            k = d / d.min()  # steps that are whole multiples of the smallest one: slices are missing
            missing = int(np.sum(np.rint(k) - 1)) if np.all(np.abs(k - np.rint(k)) <= 0.05) else 0
            if missing:
                j, step, what = int(np.argmax(d)), float(d.min()), f"{missing} missing slice(s)"
            else:
                j, what = int(np.argmax(np.abs(d - step))), "irregular steps"
            return SeriesProblem(SKIP_MISSING if missing else SKIP_SPACING, where,
                                 f"uneven slice spacing: {d[j]:.3f} mm after {headers[j].path.name} vs {step:.3f} mm "
                                 f"elsewhere ({what})", "add the missing slices, or use --skip-bad to leave this "
                                 "series out")
        extent = float(pos[-1] - pos[0])
        drift = float(np.linalg.norm((ipp[-1] - ipp[0]) - extent * normal))
        if drift > max(SHEAR_TOLERANCE * extent, 0.05):
            return SeriesProblem(SKIP_SHEARED, where, f"the slices drift {drift:.2f} mm sideways over {extent:.1f} mm "
                                 "(gantry tilt): they are not stacked along their normal",
                                 "resample the series onto an orthogonal grid (e.g. dcm2niix corrects tilt)")
    else:
        step = float(ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0)
    direction = tuple(np.stack([row, col, normal], axis=1).reshape(-1).tolist())
    geom = {"spacing": (ps[1], ps[0], abs(step)), "origin": tuple(ipp[0].tolist()), "direction": direction}
    return headers, geom


def slice_geometry(headers: Sequence[DicomHeader]) -> tuple[list[DicomHeader], dict[str, Any]]:
    """Sort a CT series along its slice normal and derive spacing, origin and direction (LPS).

    Raises InputError (naming the series folder, or the odd slice) when :func:`check_series` finds the
    slices do not form one regular grid: mixed orientation/size/pixel spacing, duplicate positions,
    uneven slice spacing (a missing slice), or a sheared (gantry-tilted) stack.
    """
    checked = check_series(list(headers))
    if isinstance(checked, SeriesProblem):
        raise checked.error()
    return checked


def read_ct_series(headers: Sequence[DicomHeader]) -> Volume:
    """Read a CT series (one SeriesInstanceUID) into an int16 HU Volume with LPS geometry.

    ``tags`` holds ``scanner`` (see :func:`scanner_tags`), the series identifiers and the sorted
    source files. Raises InputError naming the file whose pixels cannot be read.
    """
    import pydicom

    headers, geom = slice_geometry(list(headers))
    ds0 = headers[0].ds
    out = np.empty((len(headers), int(ds0.Rows), int(ds0.Columns)), np.int16)
    n_pad = 0
    for k, h in enumerate(headers):
        try:
            ds = pydicom.dcmread(h.path)
        except Exception as e:  # noqa: BLE001
            raise InputError(h.path, f"cannot read DICOM file ({type(e).__name__}: {e})",
                             "re-export or re-download this file, or use --skip-bad") from e
        if "PixelData" not in ds:
            raise InputError(h.path, "CT image has no PixelData element (a header-only file)",
                             "re-export the series with its pixel data, or use --skip-bad")
        try:
            raw = ds.pixel_array
        except Exception as e:  # noqa: BLE001
            raise InputError(h.path, f"cannot read pixel data ({type(e).__name__}: {e}); the file is truncated "
                             "or corrupt", "re-export or re-download this file, or use --skip-bad") from e
        if raw.shape != out.shape[1:]:
            raise InputError(h.path, f"pixel data shape {raw.shape} != Rows x Columns {out.shape[1:]}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        hu = raw.astype(np.float32) * slope + intercept
        pad = ds.get("PixelPaddingValue")
        if pad is not None:
            m = raw == pad
            n_pad += int(m.sum())
            hu[m] = PADDING_HU
        out[k] = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    if n_pad:
        log.debug("%s: %d padding pixels set to %d HU", headers[0].path.parent, n_pad, PADDING_HU)
    tags = {
        "scanner": scanner_tags(ds0),
        "SeriesInstanceUID": headers[0].series_uid,
        "StudyInstanceUID": headers[0].study_uid,
        "FrameOfReferenceUID": headers[0].frame_of_reference_uid,
        "PatientID": headers[0].patient_id,
        "source_files": [str(h.path) for h in headers],
    }
    return Volume(out, geom["spacing"], geom["origin"], geom["direction"], tags)
