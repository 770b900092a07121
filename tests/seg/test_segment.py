"""`styleseg segment` (seg/segment.py): streaming equals in-memory, geometry kept, bad input, continue, shards,
DICOM series in and DICOM SEG out."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from styleseg.io.volume import Volume, read_nifti, write_nifti
from styleseg.seg.predict import Predictor
from styleseg.seg.segment import segment


def _ct(seed: int = 0, n: int = 5, spacing: float = 1.0, direction=None) -> Volume:
    from seg_builders import toy_case

    vol, _ = toy_case(np.random.default_rng(seed), n=n, size=30)  # 30: not a multiple of 4 (padding path)
    return Volume(vol, (spacing, spacing, 3.0), (-12.0, 7.0, 40.0),
                  direction or (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_streaming_equals_in_memory_and_keeps_grid(tmp_path, toy_model):
    vol = _ct()
    src = write_nifti(vol, tmp_path / "in" / "ct.nii.gz")
    p = Predictor(toy_model)
    want = p.predict_volume(read_nifti(src))
    rep = segment([src], toy_model, tmp_path / "out", chunk_slices=2)
    assert rep.done == ["ct"] and rep.slices == 5 and not rep.failed
    got = read_nifti(tmp_path / "out" / "ct.nii.gz")
    assert got.same_grid(read_nifti(src)) and got.array.dtype == np.uint8
    np.testing.assert_array_equal(got.array, want.array)
    assert (want.array == 1).sum() > 0  # the toy model finds the lungs
    js = json.loads((tmp_path / "out" / "segment_report.json").read_text())
    assert js["done"] == ["ct"]


def test_bad_inputs_are_reported_and_skipped(tmp_path, toy_model):
    good = write_nifti(_ct(), tmp_path / "in" / "a_good.nii.gz")
    sag = write_nifti(_ct(direction=(0, 0, 1, 1, 0, 0, 0, 1, 0)), tmp_path / "in" / "b_sagittal.nii.gz")
    coarse = write_nifti(_ct(spacing=5.0), tmp_path / "in" / "c_coarse.nii.gz")  # > 4x off: refused
    empty = tmp_path / "in" / "d_empty.nii.gz"
    empty.write_bytes(b"")
    trunc = tmp_path / "in" / "e_trunc.nii.gz"
    raw = gzip.decompress(good.read_bytes())
    trunc.write_bytes(gzip.compress(raw[: len(raw) - 900]))
    out = tmp_path / "out"
    rep = segment([good, sag, coarse, empty, trunc], toy_model, out)
    assert rep.done == ["a_good"]
    assert set(rep.failed) == {"b_sagittal", "c_coarse", "d_empty", "e_trunc"}
    assert "not axial" in rep.failed["b_sagittal"]
    assert "5.00x off" in rep.failed["c_coarse"] and "--force-spacing" in rep.failed["c_coarse"]
    assert "truncated" in rep.failed["e_trunc"]
    assert sorted(x.name for x in out.iterdir()) == ["a_good.nii.gz", "segment_report.json"]  # nothing half-written
    rep2 = segment([coarse], toy_model, tmp_path / "out2", force_spacing=True)
    assert rep2.done == ["c_coarse"]


def test_continue_and_shards(tmp_path, toy_model):
    ins = [write_nifti(_ct(seed=i, n=2), tmp_path / "in" / f"c{i}.nii.gz") for i in range(5)]
    out = tmp_path / "out"
    r0 = segment(ins, toy_model, out, part_id=0, num_parts=2)
    r1 = segment(ins, toy_model, out, part_id=1, num_parts=2)
    assert r0.done == ["c0", "c2", "c4"] and r1.done == ["c1", "c3"]
    assert (out / "segment_report.part1.json").exists()
    before = (out / "c1.nii.gz").stat().st_mtime_ns
    r = segment(ins, toy_model, out, continue_=True)
    assert r.skipped == [f"c{i}" for i in range(5)] and r.done == []
    assert (out / "c1.nii.gz").stat().st_mtime_ns == before


def test_dataset_input(tmp_path, toy_model, toy_dataset):
    rep = segment([toy_dataset], toy_model, tmp_path / "out")
    assert rep.done == ["toy00", "toy01", "toy02", "toy03"]
    img = sitk.ReadImage(str(toy_dataset / "imagesTr" / "toy00_0000.nii.gz"))
    lab = sitk.ReadImage(str(tmp_path / "out" / "toy00.nii.gz"))
    assert lab.GetSize() == img.GetSize() and lab.GetDirection() == img.GetDirection()
    assert np.allclose(lab.GetOrigin(), img.GetOrigin()) and np.allclose(lab.GetSpacing(), img.GetSpacing())


DICOM = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom" / "LUNG1-005"


@pytest.mark.realdata
@pytest.mark.skipif(not DICOM.exists(), reason="../shared/data/dicom/LUNG1-005 is absent (fresh clone)")
def test_dicom_series_input_matches_nifti_grid(tmp_path, toy_model):
    """A real DICOM CT series folder is read in chunks; labels lie on the series grid (the NIfTI
    copy of the same patient keeps every other slice at the same z positions)."""
    from styleseg.io.dicom import scan_dicom, slice_geometry

    src = next(DICOM.glob("*/1.000000-*"))
    headers, _ = slice_geometry(next(iter(scan_dicom([src]).ct_series().values())))
    series = tmp_path / "series"
    series.mkdir()
    for h in headers[40:52]:  # 12 consecutive slices keep the test fast
        shutil.copy(h.path, series / h.path.name)
    rep = segment([series], toy_model, tmp_path / "o", chunk_slices=5, dicom_seg=True)
    assert rep.done == ["series"] and rep.slices == 12, rep.failed
    lab = read_nifti(tmp_path / "o" / "series.nii.gz")
    ref = read_nifti(DICOM.parents[1] / "nsclc" / "LUNG1-005_ct.nii.gz")
    assert lab.shape[1:] == ref.shape[1:] == (512, 512) and lab.array.dtype == np.uint8
    assert np.allclose(lab.spacing[:2], ref.spacing[:2], atol=1e-3)
    assert np.allclose(lab.direction, ref.direction, atol=1e-4)
    common = set(np.round(ref.slice_z_positions(), 1)) & set(np.round(lab.slice_z_positions(), 1))
    assert len(common) == 6  # every other slice of the NIfTI copy
    import pydicom

    seg = pydicom.dcmread(tmp_path / "o" / "series.dcm")
    assert seg.Modality == "SEG" and len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 12


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 50])
def test_streaming_2p5d_equals_whole_volume(tmp_path, context_model, chunk):
    from seg_builders import toy_case

    arr, _ = toy_case(np.random.default_rng(3), n=7, size=28)
    arr = arr + (np.arange(7)[:, None, None] * 40).astype(np.int16)  # neighbours differ: order matters
    vol = Volume(arr, (1.0, 1.0, 3.0))
    src = write_nifti(vol, tmp_path / "in" / "ct.nii.gz")
    p = Predictor(context_model)
    want = p.predict_volume(read_nifti(src)).array
    rep = segment([src], context_model, tmp_path / "out", chunk_slices=chunk)
    assert rep.done == ["ct"], rep.failed
    np.testing.assert_array_equal(read_nifti(tmp_path / "out" / "ct.nii.gz").array, want)
    parts = list(p.predict_chunks(np.array_split(read_nifti(src).array, [1, 2, 5])))
    np.testing.assert_array_equal(np.concatenate(parts), want)


def test_dicom_folders_are_indexed_by_series_discovery(tmp_path, toy_model):
    """A folder with one series and a localizer beside it is one case (the localizer left out); a tree with two
    series of one patient is one case per series, named as the importer names them; DICOM SEG for each."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
    from io_builders import write_ct_series
    from seg_builders import toy_case

    from styleseg.seg.segment import discover_inputs

    arr, _ = toy_case(np.random.default_rng(0), n=3, size=32)
    write_ct_series(tmp_path / "one", arr + 1024, spacing=(1.0, 1.0), patient="A")
    write_ct_series(tmp_path / "scout", np.zeros((1, 16, 32), np.int16), patient="A", SeriesNumber=9,
                    ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    (tmp_path / "scout" / "img001.dcm").rename(tmp_path / "one" / "zz_scout.dcm")
    for n in (2, 3):
        write_ct_series(tmp_path / "tree" / f"s{n}", arr + 1024, spacing=(1.0, 1.0), patient="B", SeriesNumber=n)
    cases = discover_inputs([tmp_path / "one", tmp_path / "tree"])
    assert [c.case_id for c in cases] == ["B_20200101_s2", "B_20200101_s3", "one"]
    assert len(cases[2].dicom_files) == 3 and not any("scout" in f for f in cases[2].dicom_files)
    rep = segment([tmp_path / "one", tmp_path / "tree"], toy_model, tmp_path / "out", dicom_seg=True)
    assert rep.done == ["B_20200101_s2", "B_20200101_s3", "one"], rep.failed
    want = Predictor(toy_model).predict_volume(Volume(arr.astype(np.float32), (1.0, 1.0, 2.0))).array
    np.testing.assert_array_equal(read_nifti(tmp_path / "out" / "one.nii.gz").array, want)
    import pydicom

    seg = pydicom.dcmread(tmp_path / "out" / "one.dcm")
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 3
