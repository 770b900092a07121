"""RTSTRUCT rasterisation and DICOM SEG read/write on tiny synthetic grids (hand-computed masks)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from io_builders import box, write_ct_series, write_rtstruct

from styleseg.errors import InputError
from styleseg.io.dicom import read_ct_series, scan_dicom
from styleseg.io.rtstruct import rasterise_rtstruct, read_seg, rtstruct_references, write_seg
from styleseg.labels import LabelSchema


def _load(root):
    scan = scan_dicom([root])
    return read_ct_series(scan.of_kind("ct")), scan.of_kind("rtstruct")[0]


def test_box_contour_fills_exactly_the_enclosed_pixel_centres(tiny_ct):
    root, ct, _ = tiny_ct
    vol, rs = _load(root)
    ms = rasterise_rtstruct(rs.ds, vol, LabelSchema.default(), path=rs.path)
    expected = np.zeros(vol.shape, bool)
    expected[1, 3:9, 2:6] = True  # rows 3..8, columns 2..5 on slice 1 (see tiny_ct)
    assert set(ms.masks) == {"lung_left"}
    assert np.array_equal(ms.masks["lung_left"], expected)
    assert ms.rois == {"Lung_L": "lung_left", "GTV-1": None}
    assert any("GTV-1" in n for n in ms.notes)
    refs = rtstruct_references(rs.ds)
    assert refs.series_uids == {ct["series_uid"]} and refs.frame_of_reference_uid == ct["for_uid"]


def test_inner_contour_cuts_a_hole_and_structure_map_wins(tmp_path):
    stored = np.zeros((2, 10, 10), np.int16)
    ct = write_ct_series(tmp_path / "ct", stored, spacing=(1.0, 1.0), origin=(0.0, 0.0, 0.0))
    outer, inner = box(0.5, 7.5, 0.5, 7.5), box(2.5, 4.5, 2.5, 4.5)  # pixels 1..7 minus 3..4
    cord = box(0.5, 1.5, 0.5, 1.5)
    write_rtstruct(tmp_path / "rs.dcm", ct, {"WEIRD_NAME": [(0, outer), (0, inner)], "Cord": [(1, cord)]})
    vol, rs = _load(tmp_path)
    ms = rasterise_rtstruct(rs.ds, vol, LabelSchema.default(), {"weird_name": "heart"}, rs.path)
    exp = np.zeros((10, 10), bool)
    exp[1:8, 1:8] = True
    exp[3:5, 3:5] = False
    assert np.array_equal(ms.masks["heart"][0], exp) and not ms.masks["heart"][1].any()
    assert ms.masks["spinal_cord"][1].sum() == 1 and ms.masks["spinal_cord"][1, 1, 1]


def test_contour_off_the_grid_is_an_error(tmp_path):
    ct = write_ct_series(tmp_path / "ct", np.zeros((2, 6, 6), np.int16), origin=(0.0, 0.0, 0.0))
    ct_bad = dict(ct, z=[1.0, 3.0])  # halfway between slices (0, 2 mm)
    write_rtstruct(tmp_path / "rs.dcm", ct_bad, {"Heart": [(0, box(0.5, 2.5, 0.5, 2.5))]})
    vol, rs = _load(tmp_path)
    with pytest.raises(InputError, match="not on a slice") as e:
        rasterise_rtstruct(rs.ds, vol, LabelSchema.default(), path=rs.path)
    assert e.value.path == rs.path


def test_seg_write_then_read_round_trip(tmp_path):
    stored = np.zeros((3, 8, 8), np.int16)
    write_ct_series(tmp_path / "ct", stored, origin=(-5.0, 3.0, 10.0), Manufacturer="ACME")
    vol = read_ct_series(scan_dicom([tmp_path / "ct"]).of_kind("ct"))
    schema = LabelSchema.default()
    lab = np.zeros(vol.shape, np.uint8)
    lab[0, 1:4, 2:5] = schema.value("heart")
    lab[2, 5:7, 0:3] = schema.value("spinal_cord")
    out = write_seg(vol.with_array(lab), schema, vol.tags["source_files"], tmp_path / "seg.dcm")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and [s.SegmentLabel for s in ds.SegmentSequence] == ["heart", "spinal_cord"]
    ms = read_seg(ds, vol, schema, path=out)
    assert np.array_equal(schema.compose(ms.masks, vol.shape), lab)
