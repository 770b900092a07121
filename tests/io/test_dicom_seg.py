"""DICOM SEG written for a real source series (write_seg): references, geometry, segments, round trip.

Source series: LUNG1-005's CT (91 slices, 3 mm) with a label volume rasterised from its own RTSTRUCT, and
single axial slices of COVID-19-NY-SBU (GE and Toshiba). The SEG is decoded twice, by highdicom
(``segread`` + ``get_pixels_by_source_instance``) and by our ``read_seg`` (pydicom), and both must give
back the label volume voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from io_builders import need_data, write_ct_series

from styleseg.errors import InputError
from styleseg.io.dicom import SEG_STORAGE, read_ct_series, scan_dicom, slice_geometry
from styleseg.io.rtstruct import SNOMED, rasterise_rtstruct, read_seg, write_seg
from styleseg.io.volume import Volume
from styleseg.labels import LabelSchema

SCHEMA = LabelSchema.default()


@pytest.fixture(scope="module")
def lung005() -> tuple[list[str], Volume]:
    """LUNG1-005's CT slice files in slice order, and its RTSTRUCT rasterised on that grid (uint8 labels).

    The grid comes from the headers alone (no pixel data is read), which is all rasterising needs.
    """
    scan = scan_dicom([need_data("dicom", "LUNG1-005")])
    headers, geom = slice_geometry(scan.of_kind("ct"))
    h0 = headers[0].ds
    grid = Volume(np.broadcast_to(np.uint8(0), (len(headers), int(h0.Rows), int(h0.Columns))), geom["spacing"],
                  geom["origin"], geom["direction"])
    rs = scan.of_kind("rtstruct")[0]
    masks = rasterise_rtstruct(rs.ds, grid, SCHEMA, None, rs.path).masks
    label = grid.with_array(SCHEMA.compose(masks, grid.shape))
    return [str(h.path) for h in headers], label


def _sources(files: list[str]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _check_references_and_geometry(seg: pydicom.Dataset, src: list[pydicom.Dataset]) -> list[int]:
    """Assert the SEG's study / frame of reference / series / instance references and per-frame geometry
    match the source slices; return the source slice index of every frame."""
    s0 = src[0]
    assert seg.Modality == "SEG" and seg.SOPClassUID == SEG_STORAGE
    assert seg.StudyInstanceUID == s0.StudyInstanceUID and seg.FrameOfReferenceUID == s0.FrameOfReferenceUID
    assert seg.PatientID == s0.PatientID and seg.SeriesInstanceUID != s0.SeriesInstanceUID
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == s0.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in ref_series.ReferencedInstanceSequence] == [d.SOPInstanceUID
                                                                                           for d in src]
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient, s0.ImageOrientationPatient)
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, s0.PixelSpacing)
    index = {d.SOPInstanceUID: k for k, d in enumerate(src)}
    where = []
    for fg in seg.PerFrameFunctionalGroupsSequence:
        sop = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index[sop]
        assert np.allclose(fg.PlanePositionSequence[0].ImagePositionPatient, src[k].ImagePositionPatient, atol=1e-4)
        where.append(k)
    return where


def _frames_by_segment(seg: pydicom.Dataset, where: list[int]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for fg, k in zip(seg.PerFrameFunctionalGroupsSequence, where, strict=True):
        out.setdefault(int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber), set()).add(k)
    return out


def _highdicom_masks(path: Path, src: list[pydicom.Dataset], n_segments: int) -> np.ndarray:
    """(z, y, x, segment) bool masks decoded by highdicom, in source-slice order."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    assert seg.number_of_segments == n_segments
    px = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in src], segment_numbers=list(
        range(1, n_segments + 1)), assert_missing_frames_are_empty=True)
    return np.asarray(px) > 0


@pytest.mark.realdata
def test_seg_of_a_whole_real_series(lung005, tmp_path):
    files, label = lung005
    out = write_seg(label, SCHEMA, files, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(out)
    src = _sources(files)
    where = _check_references_and_geometry(seg, src)
    present = ["lung_left", "lung_right", "heart", "esophagus", "spinal_cord"]  # no body in the RTSTRUCT
    assert [s.SegmentLabel for s in seg.SegmentSequence] == present
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == [SNOMED[n][0]
                                                                                             for n in present]
    # one frame per (segment, slice where it is present): no empty frames
    lab = label.array
    expected = {i: set(np.nonzero((lab == SCHEMA.value(n)).any(axis=(1, 2)))[0].tolist())
                for i, n in enumerate(present, start=1)}
    assert _frames_by_segment(seg, where) == expected
    assert seg.NumberOfFrames == sum(len(v) for v in expected.values())
    hd_masks = _highdicom_masks(out, src, len(present))
    for i, n in enumerate(present):
        assert np.array_equal(hd_masks[..., i], lab == SCHEMA.value(n)), n
    back = read_seg(seg, label, SCHEMA, path=out)
    assert np.array_equal(SCHEMA.compose(back.masks, label.shape), lab)


@pytest.mark.realdata
def test_seg_of_a_slab_without_the_heart(lung005, tmp_path):
    """Consecutive slices of the series are a valid source too; a structure absent there gets no segment."""
    files, label = lung005
    heart = np.nonzero((label.array == SCHEMA.value("heart")).any(axis=(1, 2)))[0]
    z1 = int(heart.min())
    sl = slice(z1 - 6, z1)  # six slices just above the heart
    sub = Volume(np.ascontiguousarray(label.array[sl]), label.spacing,
                 tuple(label.index_to_physical([[sl.start, 0, 0]])[0]), label.direction)
    out = write_seg(sub, SCHEMA, files[sl], tmp_path / "slab.dcm")
    seg = pydicom.dcmread(out)
    src = _sources(files[sl])
    where = _check_references_and_geometry(seg, src)
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert "heart" not in names and "lung_left" in names and "spinal_cord" in names
    back = read_seg(seg, sub, SCHEMA, path=out)
    assert np.array_equal(SCHEMA.compose(back.masks, sub.shape), sub.array)
    assert set(where) <= set(range(6))


@pytest.mark.realdata
def test_all_background_label_gives_a_valid_empty_seg(lung005, tmp_path):
    files, label = lung005
    sub = Volume(np.zeros((3, *label.shape[1:]), np.uint8), label.spacing, label.origin, label.direction)
    out = write_seg(sub, SCHEMA, files[:3], tmp_path / "empty.dcm", structures=["heart", "lung_left"])
    seg = pydicom.dcmread(out)
    src = _sources(files[:3])
    where = _check_references_and_geometry(seg, src)  # all 3 slices referenced, frames on slice 0
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["heart", "lung_left"]
    assert seg.NumberOfFrames == 2 and where == [0, 0]
    assert not _highdicom_masks(out, src, 2).any()
    back = read_seg(seg, sub, SCHEMA, path=out)
    assert not any(m.any() for m in back.masks.values())


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["A002304/19001231-076.dcm", "A046441/19010101-23.dcm"])  # GE, Toshiba
def test_seg_of_a_single_slice_series(tmp_path, name):
    f = need_data("dicom", "covid19-ny-sbu-axial", name)
    ct = read_ct_series(scan_dicom([f]).of_kind("ct"))
    lab = np.zeros(ct.shape, np.uint8)
    body = ct.array > -300
    lab[body] = SCHEMA.value("body")
    lab[:, 200:300, 300:360] = SCHEMA.value("lung_left")
    lab[:, 210:260, 150:200] = SCHEMA.value("heart")
    label = ct.with_array(lab)
    out = write_seg(label, SCHEMA, [f], tmp_path / "one.dcm")
    seg = pydicom.dcmread(out)
    src = _sources([str(f)])
    assert _check_references_and_geometry(seg, src) == [0, 0, 0]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lung_left", "heart", "body"]
    hd_masks = _highdicom_masks(out, src, 3)
    for i, n in enumerate(["lung_left", "heart", "body"]):
        assert np.array_equal(hd_masks[..., i], lab == SCHEMA.value(n)), n
    back = read_seg(seg, ct, SCHEMA, path=out)
    assert np.array_equal(SCHEMA.compose(back.masks, ct.shape), lab)


def test_bad_requests_name_the_problem(tmp_path):
    write_ct_series(tmp_path / "ct", np.zeros((3, 8, 8), np.int16))
    vol = read_ct_series(scan_dicom([tmp_path / "ct"]).of_kind("ct"))
    files = vol.tags["source_files"]
    with pytest.raises(InputError, match="not in the label schema"):
        write_seg(vol.with_array(np.ones(vol.shape, np.uint8)), SCHEMA, files, tmp_path / "a.dcm", ["liver"])
    other = Volume(np.ones((2, 8, 8), np.uint8), vol.spacing, vol.origin, vol.direction)
    with pytest.raises(InputError, match="label grid"):
        write_seg(other, SCHEMA, files, tmp_path / "b.dcm")
    with pytest.raises(InputError, match="no CT source files"):
        write_seg(vol, SCHEMA, [], tmp_path / "c.dcm")
    assert not list(tmp_path.glob("*.dcm"))  # nothing half-written
