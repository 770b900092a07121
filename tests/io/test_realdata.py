"""Issue 2 "Must show" 1-4 on the real chest CT in ../shared/data (skipped when that folder is absent)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from io_builders import need_data

from styleseg.io.dataset import Dataset
from styleseg.io.importer import import_sources
from styleseg.io.rtstruct import read_seg
from styleseg.io.volume import Volume, read_nifti, write_nifti
from styleseg.labels import LabelSchema

pytestmark = pytest.mark.realdata


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def lung005(tmp_path_factory):
    """LUNG1-005 DICOM CT + RTSTRUCT (+ SEG) imported once for this module."""
    src = need_data("dicom", "LUNG1-005")
    out = tmp_path_factory.mktemp("lung005") / "ds"
    report = import_sources([src], out)
    return report, Dataset(out)


def test_lung005_reproduces_reference_labels(lung005):
    """Must show 1: Dice against nsclc/LUNG1-005_labels.nii.gz at matching physical z positions.

    Measured: lungs 0.981/0.982, heart 0.992, esophagus 0.949, spinal cord 0.951. The reference file was
    rasterised by another tool with a half-pixel row offset (next test), while our rasterisation follows
    DICOM (pixel centres) and reproduces TCIA's own DICOM SEG of GTV-1 voxel for voxel (test below). The
    thin esophagus is the most sensitive to that offset, so it is held to 0.94 rather than the issue's 0.95
    (reported as not met).
    """
    report, ds = lung005
    ref = read_nifti(need_data("nsclc", "LUNG1-005_labels.nii.gz"))
    (case,) = ds.cases
    img = ds.load_image(case.case_id)
    lab = ds.load_label(case.case_id, img)
    assert img.shape == (91, 512, 512)
    z_ours, z_ref = img.slice_z_positions(), ref.slice_z_positions()
    idx = np.array([int(np.argmin(np.abs(z_ours - z))) for z in z_ref])
    assert np.max(np.abs(z_ours[idx] - z_ref)) < 0.01  # every reference slice has a DICOM slice
    assert len(set(idx.tolist())) == ref.shape[0]
    schema = LabelSchema.default()
    minimum = {"lung_left": 0.95, "lung_right": 0.95, "heart": 0.95, "esophagus": 0.94, "spinal_cord": 0.95}
    scores = {n: dice(lab.array[idx] == schema.value(n), ref.array == schema.value(n)) for n in minimum}
    assert all(scores[n] >= lo for n, lo in minimum.items()), scores
    assert case.annotated == ("lung_left", "lung_right", "heart", "esophagus", "spinal_cord", "body")
    assert case.derived == ("body",)
    assert case.extras["rois"]["GTV-1"] is None  # not in the schema: skipped with a note


def test_reference_labels_carry_a_half_pixel_row_offset(lung005):
    """Why the esophagus misses 0.95: rasterising the same contours half a pixel up (rows - 0.5, by moving
    the grid origin half a pixel along the row direction) matches the reference at >= 0.98 for every
    structure, the esophagus too, while the DICOM rasterisation stays at 0.949. Pixel-centre sampling
    (DICOM) against a half-pixel-shifted reference is the whole discrepancy, not a rasteriser error."""
    from styleseg.io.dicom import read_ct_series, scan_dicom
    from styleseg.io.rtstruct import rasterise_rtstruct

    scan = scan_dicom([need_data("dicom", "LUNG1-005")])
    ct = read_ct_series(scan.of_kind("ct"))
    ref = read_nifti(need_data("nsclc", "LUNG1-005_labels.nii.gz"))
    idx = np.array([int(np.argmin(np.abs(ct.slice_z_positions() - z))) for z in ref.slice_z_positions()])
    d = np.asarray(ct.direction).reshape(3, 3)
    shifted = Volume(ct.array, ct.spacing, tuple(np.asarray(ct.origin) + 0.5 * ct.spacing[1] * d[:, 1]), ct.direction)
    schema = LabelSchema.default()
    rs = scan.of_kind("rtstruct")[0]
    masks = {"dicom": rasterise_rtstruct(rs.ds, ct, schema, None, rs.path).masks,
             "shifted": rasterise_rtstruct(rs.ds, shifted, schema, None, rs.path).masks}
    names = ("lung_left", "lung_right", "heart", "esophagus", "spinal_cord")
    score = {k: {n: dice(m[n][idx], ref.array == schema.value(n)) for n in names} for k, m in masks.items()}
    assert min(score["shifted"].values()) >= 0.98, score
    assert score["dicom"]["esophagus"] < 0.95 < score["shifted"]["esophagus"], score


def test_lung005_rtstruct_matches_tcia_seg_exactly(lung005):
    """The GTV-1 contours rasterised by us equal TCIA's DICOM SEG of the same tumour, voxel for voxel."""
    from styleseg.io.dicom import read_ct_series, scan_dicom
    from styleseg.io.rtstruct import rasterise_rtstruct

    src = need_data("dicom", "LUNG1-005")
    scan = scan_dicom([src])
    ct = read_ct_series(scan.of_kind("ct"))
    schema = LabelSchema((("gtv", 1),))
    rs, seg = scan.of_kind("rtstruct")[0], scan.of_kind("seg")[0]
    a = rasterise_rtstruct(rs.ds, ct, schema, {"GTV-1": "gtv"}, rs.path).masks["gtv"]
    b = read_seg(pydicom.dcmread(seg.path), ct, schema, {"Neoplasm, Primary": "gtv"}, seg.path).masks["gtv"]
    assert a.sum() > 20000 and np.array_equal(a, b)


def test_label_overlays_image_in_ras_for_slicer(lung005, tmp_path):
    """Must show 4b: the label NIfTI of a DICOM case, read by nibabel (RAS), has the LPS affine with x, y negated."""
    _, ds = lung005
    (case,) = ds.cases
    img = ds.load_image(case.case_id)
    lab_nib = nib.load(str(ds.label_path(case.case_id)))
    d = np.asarray(img.direction).reshape(3, 3) * np.asarray(img.spacing)[None, :]
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = d, img.origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert np.allclose(lab_nib.affine, ras, atol=1e-4)
    assert np.allclose(nib.load(str(ds.image_path(case.case_id))).affine, lab_nib.affine)
    # nibabel's array is (x, y, z); ours is (z, y, x): same voxels
    assert np.array_equal(np.asarray(lab_nib.dataobj)[:, :, 45].T, ds.load_label(case.case_id).array[45])
    # first DICOM voxel centre = ImagePositionPatient of the lowest slice, in RAS: (-x, -y, z)
    first = pydicom.dcmread(case.extras["source_files"][0], stop_before_pixels=True)
    ipp = np.asarray(first.ImagePositionPatient, float)
    assert np.allclose(lab_nib.affine @ [0, 0, 0, 1], [-ipp[0], -ipp[1], ipp[2], 1], atol=1e-3)


def test_nifti_round_trip_keeps_geometry(tmp_path):
    """Must show 4a: spacing, origin and an oblique direction survive write/read."""
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0)
    v = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), (0.7, 0.9, 2.5), (-120.5, 33.25, 410.0), direction)
    back = read_nifti(write_nifti(v, tmp_path / "v.nii.gz"))
    assert np.allclose(back.spacing, v.spacing) and np.allclose(back.origin, v.origin, atol=1e-4)
    assert np.allclose(back.direction, v.direction, atol=1e-6)
    assert np.array_equal(back.array, v.array)


def test_covid_single_slices(tmp_path):
    """Must show 2: 20 single-slice GE/Toshiba cases, air near -1000 HU, soft tissue near 40 HU, kernels."""
    src = need_data("dicom", "covid19-ny-sbu-axial")
    report = import_sources([src], tmp_path / "covid")
    ds = Dataset(tmp_path / "covid")
    assert len(ds) == 20 and len(report.cases) == 20 and not report.skipped
    kernels = set()
    pooled = np.zeros(len(np.arange(-1100, 201, 10)) - 1)
    for c in ds:
        assert c.labels is None
        sc = c.extras["scanner"]
        kernels.add((sc["Manufacturer"].split()[0], sc["ConvolutionKernel"]))
        hu = ds.load_image(c.case_id).array.astype(np.float32)
        assert hu.shape[0] == 1
        hist, edges = np.histogram(hu, bins=np.arange(-1100, 201, 10))
        pooled += hist / hu.size
        centres = edges[:-1] + 5
        air = centres[centres < -800][np.argmax(hist[centres < -800])]  # mode of the air peak
        assert -1050 <= air <= -950, (c.case_id, air)
        tissue = hu[(hu > -100) & (hu < 150)]
        assert tissue.size > 0.03 * hu.size, c.case_id  # soft tissue and fat are there
        assert 20 <= np.median(hu[(hu >= 0) & (hu <= 100)]) <= 65, c.case_id  # muscle/organs/blood
    soft = (centres > -50) & (centres < 150)
    assert 20 <= centres[soft][np.argmax(pooled[soft])] <= 60  # pooled soft-tissue peak near 40 HU
    assert kernels == {("GE", "STANDARD"), ("TOSHIBA", "FC17")}


def test_nsclc_nifti_keeps_partial_annotation(tmp_path):
    """Must show 3: cases.json's annotated lists survive (LUNG1-001: no heart, no esophagus)."""
    folder = need_data("nsclc")
    cases = json.loads((folder / "cases.json").read_text())["cases"]
    pairs = [(folder / f"{c['id']}_ct.nii.gz", folder / f"{c['id']}_labels.nii.gz") for c in cases[:2]]
    import_sources(pairs, tmp_path / "ns", cases_json=folder / "cases.json", derive_body=False)
    ds = Dataset(tmp_path / "ns")
    assert ds.case("LUNG1-001").annotated == ("lung_left", "lung_right", "spinal_cord")
    assert "heart" not in ds.case("LUNG1-001").annotated and "esophagus" not in ds.case("LUNG1-001").annotated
    assert ds.case("LUNG1-002").annotated == ("lung_left", "lung_right", "heart", "esophagus", "spinal_cord")
    ref = read_nifti(folder / "LUNG1-001_labels.nii.gz")
    assert np.array_equal(ds.load_label("LUNG1-001").array, ref.array)


def test_nsclc_folder_import_uses_cases_json_and_derives_body(tmp_path):
    """A folder of X_ct/X_labels pairs with its cases.json (two partial cases, linked, not copied)."""
    folder = need_data("nsclc")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("cases.json", "LUNG1-001_ct.nii.gz", "LUNG1-001_labels.nii.gz", "LUNG1-004_ct.nii.gz",
                 "LUNG1-004_labels.nii.gz"):
        (src / name).symlink_to(folder / name)
    import_sources([src], tmp_path / "ns")
    ds = Dataset(tmp_path / "ns")
    assert [c.case_id for c in ds] == ["LUNG1-001", "LUNG1-004"]
    c = ds.case("LUNG1-001")
    assert c.annotated == ("lung_left", "lung_right", "spinal_cord", "body") and c.derived == ("body",)
    assert ds.case("LUNG1-004").annotated == ("lung_left", "lung_right", "esophagus", "spinal_cord", "body")
    lab = ds.load_label("LUNG1-001").array
    assert (lab == 6).sum() > 10 * (lab == 1).sum() / 2  # the body is much larger than a lung
    assert not (lab == 3).any()  # no heart label where the heart was not annotated
