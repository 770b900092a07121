"""Series discovery in unlabelled DICOM trees: every axial CT series fit for segmentation, one case each.

A large archive mixes, per study, the axial series to segment with localizers (scouts, topograms),
reformats, secondary captures (dose screens), structure sets and files that are not DICOM at all.
:func:`discover_series` takes the header index of :func:`styleseg.io.dicom.scan_dicom` and returns the
series to import (slices sorted, grid derived, a stable case id) and those it left out with a reason
code (``styleseg.io.dicom.SKIP_*``), so one odd series does not stop the import of thousands of good
ones. The importer (:func:`styleseg.io.importer.import_sources`) builds its DICOM cases from it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.io.dataset import safe_case_id
from styleseg.io.dicom import (
    AXIAL_MAX_TILT_DEG,
    SKIP_LOCALIZER,
    SKIP_NOT_AXIAL,
    SKIP_NOT_CT,
    SKIP_OBLIQUE,
    DicomHeader,
    DicomScan,
    SeriesProblem,
    check_series,
    series_folder,
)

log = logging.getLogger("styleseg.io.series")


@dataclass
class CTSeries:
    """One CT series fit for segmentation: slices sorted along the normal, its grid and its case id."""

    case_id: str
    headers: list[DicomHeader]
    geometry: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def series_uid(self) -> str:
        return self.headers[0].series_uid

    @property
    def patient_id(self) -> str:
        return self.headers[0].patient_id

    @property
    def folder(self) -> Path:
        return series_folder(self.headers)

    @property
    def files(self) -> list[str]:
        """The slice files in slice order (what :func:`styleseg.io.rtstruct.write_seg` takes)."""
        return [str(h.path) for h in self.headers]

    def reference(self) -> dict[str, Any]:
        """The series' identifiers and its ordered SOPInstanceUIDs: what a DICOM SEG written later refers to."""
        ds = self.headers[0].ds
        return {"SeriesInstanceUID": self.series_uid, "StudyInstanceUID": self.headers[0].study_uid,
                "FrameOfReferenceUID": self.headers[0].frame_of_reference_uid, "PatientID": self.patient_id,
                "SeriesNumber": _int_or_none(ds.get("SeriesNumber")),
                "SeriesDescription": str(ds.get("SeriesDescription", "") or ""),
                "n_slices": len(self.headers), "sop_instance_uids": [h.sop_instance_uid for h in self.headers]}


@dataclass(frozen=True)
class SkippedSeries:
    """A series :func:`discover_series` left out, and why (``reason`` is one of the ``SKIP_*`` codes)."""

    series_uid: str
    folder: Path
    reason: str
    detail: str
    n_files: int
    patient_id: str
    description: str = ""

    def describe(self) -> str:
        what = f"series {self.description!r}" if self.description else f"series {self.series_uid}"
        return f"{what} ({self.n_files} files) of patient {self.patient_id} left out: {self.reason}: {self.detail}"


@dataclass
class SeriesIndex:
    """Every series found under the inputs: those fit for segmentation, and those left out with the reason."""

    series: list[CTSeries] = field(default_factory=list)
    skipped: list[SkippedSeries] = field(default_factory=list)

    def by_uid(self) -> dict[str, CTSeries]:
        return {s.series_uid: s for s in self.series}


def discover_series(scan: DicomScan) -> SeriesIndex:
    """Find every axial CT image series under a scanned tree, one case each, and say why the rest were left out.

    Slices are grouped by SeriesInstanceUID; copies of one instance (same SOPInstanceUID) count once;
    localizer images are dropped (a series of only localizers is skipped as ``localizer``); the rest must
    form one regular grid (:func:`check_series`) whose slice normal is within :data:`AXIAL_MAX_TILT_DEG`
    of the patient's z axis. Single-slice series are kept. Non-CT series (secondary captures, dose
    reports, other modalities) are listed as ``not a CT image series``. Case ids: see :func:`_case_ids`.
    """
    index = SeriesIndex()
    others: dict[str, list[DicomHeader]] = {}
    for h in scan.of_kind("other"):
        others.setdefault(h.series_uid, []).append(h)
    for uid, hs in others.items():
        kinds = sorted({f"modality {h.modality or '?'}, {_sop_name(h.sop_class_uid)}" for h in hs})
        index.skipped.append(_skip(uid, hs, SKIP_NOT_CT, "; ".join(kinds)))
    for uid, hs in scan.ct_series().items():
        notes: list[str] = []
        seen: dict[str, DicomHeader] = {}
        for h in hs:
            if h.sop_instance_uid in seen:
                notes.append(f"{h.path} is a copy of {seen[h.sop_instance_uid].path} (same SOPInstanceUID): read once")
            else:
                seen[h.sop_instance_uid] = h
        images = [h for h in seen.values() if not h.is_localizer]
        if not images:
            index.skipped.append(_skip(uid, hs, SKIP_LOCALIZER, f"ImageType {'/'.join(hs[0].image_type)}"))
            continue
        if len(images) < len(seen):
            notes.append(f"{len(seen) - len(images)} localizer image(s) of this series left out")
        checked = check_series(images)
        if isinstance(checked, SeriesProblem):
            index.skipped.append(_skip(uid, hs, checked.reason, checked.problem))
            continue
        ordered, geom = checked
        normal = np.asarray(geom["direction"], float).reshape(3, 3)[:, 2]
        tilt = float(np.degrees(np.arccos(min(1.0, abs(normal[2])))))
        if tilt > 45.0:
            plane = "sagittal" if abs(normal[0]) >= abs(normal[1]) else "coronal"
            index.skipped.append(_skip(uid, hs, SKIP_NOT_AXIAL,
                                       f"{plane} slices (normal {np.round(normal, 3).tolist()})"))
            continue
        if tilt > AXIAL_MAX_TILT_DEG:
            index.skipped.append(_skip(uid, hs, SKIP_OBLIQUE, f"slices tilted {tilt:.1f} deg from axial "
                                       f"(more than {AXIAL_MAX_TILT_DEG:g})"))
            continue
        index.series.append(CTSeries("", ordered, geom, notes))
    _case_ids(index.series)
    index.series.sort(key=lambda s: s.case_id)
    for s in index.skipped:
        log.info("%s: %s", s.folder, s.describe())
    return index


def _case_ids(series: list[CTSeries]) -> None:
    """Give each series a case id that is unique, file-system safe and independent of file order.

    The PatientID alone when the patient has one series, else ``PatientID_StudyDate_sSeriesNumber``;
    ids that still collide (case-insensitively, for macOS/Windows file systems) get the first 6 hex
    digits of the SHA-1 of their SeriesInstanceUID, so an id does not depend on which series was found first.
    """
    per_patient = Counter(s.patient_id for s in series)
    base: dict[str, str] = {}
    for s in series:
        ds = s.headers[0].ds
        raw = s.patient_id if per_patient[s.patient_id] == 1 else (
            f"{s.patient_id}_{ds.get('StudyDate', '') or 'nodate'}_s{ds.get('SeriesNumber', '') or 0}")
        try:
            base[s.series_uid] = safe_case_id(raw)
        except ValueError:  # nothing file-system safe left (e.g. PatientID '***')
            base[s.series_uid] = "anonymous"
    counts = Counter(b.lower() for b in base.values())
    used: set[str] = set()
    for s in sorted(series, key=lambda s: s.series_uid):
        cid = base[s.series_uid]
        if counts[cid.lower()] > 1:
            cid = f"{cid}_{hashlib.sha1(s.series_uid.encode()).hexdigest()[:6]}"
        n, stem = 2, cid
        while cid.lower() in used:
            cid, n = f"{stem}_{n}", n + 1
        used.add(cid.lower())
        s.case_id = cid


def _skip(uid: str, hs: Sequence[DicomHeader], reason: str, detail: str) -> SkippedSeries:
    return SkippedSeries(uid, series_folder(hs), reason, detail, len(hs), hs[0].patient_id,
                         str(hs[0].ds.get("SeriesDescription", "") or ""))


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name if uid else "no SOP class"


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
