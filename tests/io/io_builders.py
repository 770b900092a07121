"""Builders for io tests: tiny synthetic DICOM CT series and RTSTRUCTs, and the real-data path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def need_data(*parts: str) -> Path:
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data {p} is absent (../shared/data is not in a fresh clone)")
    return p


def _uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def write_ct_series(folder: Path, stored: np.ndarray, spacing=(0.5, 0.8), dz: float = 2.0,
                    origin=(-10.0, -20.0, 30.0), patient: str = "P1", slope: float = 1.0,
                    intercept: float = -1024.0, series_uid: str | None = None, for_uid: str | None = None,
                    z_positions: Sequence[float] | None = None, **tags) -> dict:
    """Write ``stored`` (z, y, x int16) as a CT series; files are named in *reverse* slice order.

    ``spacing`` is (row spacing, column spacing) = DICOM PixelSpacing. Returns the identifiers.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or _uid()
    for_uid = for_uid or _uid()
    study = _uid()
    nz = stored.shape[0]
    zs = list(z_positions) if z_positions is not None else [origin[2] + k * dz for k in range(nz)]
    sops = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop = _uid()
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
        ds.PatientID, ds.PatientName = patient, f"{patient}^"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20200101", 1, k + 1
        ds.FrameOfReferenceUID = for_uid
        ds.ImagePositionPatient = [origin[0], origin[1], zs[k]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        for key, v in tags.items():
            setattr(ds, key, v)
        ds.PixelData = np.ascontiguousarray(stored[k].astype(np.int16)).tobytes()
        ds.save_as(folder / f"img{nz - k:03d}.dcm", enforce_file_format=True)
        sops.append(sop)
    return {"series_uid": series_uid, "for_uid": for_uid, "sops": sops, "z": zs, "study": study}


def write_rtstruct(path: Path, ct: dict, rois: dict[str, list[tuple[int, list[tuple[float, float]]]]],
                   patient: str = "P1") -> Path:
    """RTSTRUCT with ROIs name -> [(slice index, [(x mm, y mm), ...]), ...] on the series ``ct``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    sop = _uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTStructureSetStorage, sop, "RTSTRUCT"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, ct["study"], _uid()
    rf = Dataset()
    rf.FrameOfReferenceUID = ct["for_uid"]
    st = Dataset()
    se = Dataset()
    se.SeriesInstanceUID = ct["series_uid"]
    ci = []
    for s in ct["sops"]:
        d = Dataset()
        d.ReferencedSOPInstanceUID = s
        ci.append(d)
    se.ContourImageSequence = Seq(ci)
    st.RTReferencedSeriesSequence = Seq([se])
    rf.RTReferencedStudySequence = Seq([st])
    ds.ReferencedFrameOfReferenceSequence = Seq([rf])
    ssr, rcs = [], []
    for i, (name, contours) in enumerate(rois.items(), start=1):
        r = Dataset()
        r.ROINumber, r.ROIName, r.ReferencedFrameOfReferenceUID = i, name, ct["for_uid"]
        ssr.append(r)
        rc = Dataset()
        rc.ReferencedROINumber = i
        cs = []
        for k, pts in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [v for x, y in pts for v in (x, y, ct["z"][k])]
            img = Dataset()
            img.ReferencedSOPInstanceUID = ct["sops"][k]
            c.ContourImageSequence = Seq([img])
            cs.append(c)
        rc.ContourSequence = Seq(cs)
        rcs.append(rc)
    ds.StructureSetROISequence = Seq(ssr)
    ds.ROIContourSequence = Seq(rcs)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def box(x0: float, x1: float, y0: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
