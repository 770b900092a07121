"""Silent corruption on import: truncated NIfTI, NaN/Inf voxels, CT not in HU, DICOM without pixels, 2D images.

Each is refused with a one-line error naming the file, and `styleseg import` leaves nothing at --out.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from rel_helpers import body_ct, expect_error, listing, write_ct_dicom, write_ct_nifti
from typer.testing import CliRunner

from styleseg.cli import app
from styleseg.errors import InputError
from styleseg.io.dataset import Dataset
from styleseg.io.volume import read_nifti


def _import(tmp_path, src, what, contains, extra=()):
    out = tmp_path / "ds"
    line = expect_error(["import", str(src), "--out", str(out), *extra], input=what, contains=contains,
                        left="nothing at --out, no temporaries", tmp=tmp_path)
    assert not out.exists() and not list(tmp_path.glob(".ds.*")), listing(tmp_path)
    return line


def test_truncated_nii_gz_refused(tmp_path):
    p = write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as e:
        read_nifti(p)
    assert e.value.path == p and "of the" in e.value.problem  # says how much is there
    _import(tmp_path, tmp_path / "src", "`.nii.gz` cut to half its size", [str(p), "truncated", "fix:"])


def test_truncated_plain_nii_refused(tmp_path):
    p = write_ct_nifti(tmp_path / "src" / "a_ct.nii")
    data = p.read_bytes()
    p.write_bytes(data[:-1000])
    with pytest.raises(InputError, match="truncated"):
        read_nifti(p)
    _import(tmp_path, tmp_path / "src", "`.nii` missing its last 1000 bytes", [str(p), "truncated"])


def test_corrupt_gzip_stream_refused(tmp_path):
    p = write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz")
    raw = bytearray(gzip.decompress(p.read_bytes()))
    comp = bytearray(gzip.compress(bytes(raw)))
    comp[-6] ^= 0xFF  # the CRC-32 in the gzip trailer no longer matches the data
    p.write_bytes(bytes(comp))
    _import(tmp_path, tmp_path / "src", "`.nii.gz` with a bad CRC", [str(p), "corrupt"])


def test_complete_nii_gz_with_extra_members_reads(tmp_path):
    """A gzip stream in several members (bgzip, pigz --independent) is complete: it must still read."""
    p = write_ct_nifti(tmp_path / "a_ct.nii.gz")
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(read_nifti(p).array, body_ct())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_voxels_refused(tmp_path, bad):
    hu = body_ct().astype(np.float32)
    hu[1, 10, 12] = bad
    p = write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz", hu)
    with pytest.raises(InputError, match="NaN or infinite") as e:
        read_nifti(p)
    assert "(z, y, x) = (1, 10, 12)" in e.value.problem
    _import(tmp_path, tmp_path / "src", f"float NIfTI with a voxel of {bad}", [str(p), "1 voxel", "NaN or infinite"])


def test_unrescaled_nifti_refused_unless_allowed(tmp_path):
    stored = (body_ct() + 1024).astype(np.int16)  # 0..4095 stored values: air near 0, not -1000
    p = write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz", stored)
    line = _import(tmp_path, tmp_path / "src", "CT stored 0..4095 (no RescaleIntercept)",
                   [str(p), "Hounsfield", "--allow-unusual-hu"])
    assert "minimum" in line and "1st percentile" in line
    r = CliRunner().invoke(app, ["import", str(tmp_path / "src"), "--out", str(tmp_path / "ds"),
                                 "--allow-unusual-hu"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(Dataset(tmp_path / "ds").load_image("a").array, stored)


def test_unrescaled_dicom_refused(tmp_path):
    write_ct_dicom(tmp_path / "series", (body_ct() + 1024).astype(np.int16), intercept=0.0)
    _import(tmp_path, tmp_path / "series", "DICOM CT with RescaleIntercept 0 on stored 0..4095",
            [str(tmp_path / "series"), "Hounsfield", "RescaleIntercept"])


def test_small_crop_is_not_judged_by_hu(tmp_path):
    """A crop narrower than the HU check's field of view may hold no air at all: it imports as it is."""
    hu = np.full((2, 12, 10), 40, np.int16)
    write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz", hu, spacing=(0.8, 0.5, 2.0))
    r = CliRunner().invoke(app, ["import", str(tmp_path / "src"), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output


def test_dicom_without_pixel_data_says_so(tmp_path):
    files = write_ct_dicom(tmp_path / "series", body_ct(), pixel_data=False)
    line = _import(tmp_path, tmp_path / "series", "DICOM CT slice without PixelData",
                   [str(files[0]), "no PixelData"])
    assert "truncated" not in line


def test_2d_nifti_refused_where_a_volume_is_expected(tmp_path):
    import SimpleITK as sitk

    src = tmp_path / "src"
    src.mkdir()
    img = sitk.GetImageFromArray(body_ct()[0])
    img.SetSpacing((5.0, 5.0))
    sitk.WriteImage(img, str(src / "a_ct.nii.gz"))
    with pytest.raises(InputError, match="2D image"):
        read_nifti(src / "a_ct.nii.gz", require_3d=True)
    assert read_nifti(src / "a_ct.nii.gz").shape == (1, 64, 64)  # where a slice is fine, it still reads
    _import(tmp_path, src, "2D NIfTI given as a CT volume", [str(src / "a_ct.nii.gz"), "2D image", "3D"])


@pytest.mark.parametrize("name", ["big.nii.gz", "big.nii"])
def test_nan_found_past_the_first_chunk(tmp_path, name):
    """The scan streams the file in 1 MiB chunks: a NaN far in is found and placed exactly."""
    from styleseg.io.volume import Volume, write_nifti

    arr = np.zeros((8, 256, 256), np.float32)  # 2 MiB of data
    arr[5, 100, 7] = np.nan
    arr[7, 255, 255] = np.inf
    p = write_nifti(Volume(arr), tmp_path / name)
    with pytest.raises(InputError, match=r"2 voxels are NaN or infinite \(first at \(z, y, x\) = \(5, 100, 7\)\)"):
        read_nifti(p)
