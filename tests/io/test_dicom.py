"""DICOM discovery and CT series reading on tiny synthetic series with hand-computed answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from io_builders import write_ct_series

from styleseg.errors import InputError
from styleseg.io.dicom import read_ct_series, read_header, scan_dicom
from styleseg.io.dicom_tags import scanner_tags


def test_series_sorted_rescaled_and_placed(tiny_ct):
    root, ct, stored = tiny_ct
    scan = scan_dicom([root])
    (hs,) = scan.ct_series().values()
    vol = read_ct_series(hs)
    # files are named in reverse order; slices must come back in position order
    assert np.array_equal(vol.array, stored.astype(np.int16) - 1024)
    assert vol.spacing == (0.8, 0.5, 2.0)  # x = column spacing = PixelSpacing[1]
    assert vol.origin == (-10.0, -20.0, 30.0)
    assert vol.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert np.allclose(vol.index_to_physical([[3, 2, 1]]), [[-10 + 0.8, -20 + 1.0, 36.0]])
    assert vol.tags["scanner"]["ConvolutionKernel"] == "B30f"
    assert vol.tags["scanner"]["mAs"] == pytest.approx(100.0)  # 200 mA x 500 ms
    assert len(scan.of_kind("rtstruct")) == 1


def test_slope_intercept_and_single_slice(tmp_path):
    stored = np.array([[[0, 10], [20, 30]]], np.int16)
    write_ct_series(tmp_path / "s", stored, slope=2.0, intercept=-1000.0)
    vol = read_ct_series(scan_dicom([tmp_path]).of_kind("ct"))
    assert vol.shape == (1, 2, 2)
    assert vol.array.tolist() == [[[-1000, -980], [-960, -940]]]
    assert vol.spacing[2] == 2.0  # SliceThickness for a single slice


def test_descending_positions_sorted_along_normal(tmp_path):
    stored = np.arange(3)[:, None, None] * np.ones((1, 2, 2), np.int16)
    write_ct_series(tmp_path / "s", stored, z_positions=[10.0, 4.0, 7.0])
    vol = read_ct_series(scan_dicom([tmp_path]).of_kind("ct"))
    assert vol.origin[2] == 4.0 and vol.spacing[2] == 3.0
    assert vol.array[:, 0, 0].tolist() == [1 - 1024, 2 - 1024, 0 - 1024]


def test_uneven_spacing_is_an_error_naming_the_series(tmp_path):
    write_ct_series(tmp_path / "gap", np.zeros((3, 2, 2), np.int16), z_positions=[0.0, 2.0, 6.0])
    with pytest.raises(InputError, match="uneven slice spacing") as e:
        read_ct_series(scan_dicom([tmp_path]).of_kind("ct"))
    assert e.value.path == tmp_path / "gap"


def test_non_dicom_file_quietly_ignored_but_fake_dcm_is_an_error(tmp_path):
    write_ct_series(tmp_path / "s", np.zeros((1, 2, 2), np.int16))
    (tmp_path / "s" / "notes.txt").write_text("hello")
    scan = scan_dicom([tmp_path])
    assert len(scan.of_kind("ct")) == 1 and scan.ignored == [tmp_path / "s" / "notes.txt"]
    fake = tmp_path / "s" / "fake.dcm"
    fake.write_text("not dicom at all")
    with pytest.raises(InputError, match="not a DICOM file") as e:
        scan_dicom([tmp_path])
    assert e.value.path == fake
    assert read_header(tmp_path / "s" / "notes.txt") is None


def test_truncated_dicom_names_the_file(tmp_path):
    write_ct_series(tmp_path / "s", np.zeros((2, 8, 8), np.int16))
    f = tmp_path / "s" / "img001.dcm"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 40])  # pixel data cut short
    with pytest.raises(InputError, match="truncated") as e:
        scan_dicom([tmp_path])
    assert e.value.path == f
    f.write_bytes(data[:300])  # header cut short
    with pytest.raises(InputError) as e:
        scan_dicom([tmp_path])
    assert e.value.path == f
    scan = scan_dicom([tmp_path], skip_bad=True)
    assert [p for p, _ in scan.bad] == [f] and len(scan.of_kind("ct")) == 1


def test_scanner_tags_prefer_exposure():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Manufacturer, ds.ConvolutionKernel, ds.Exposure = "GE", "STANDARD", 15
    ds.XRayTubeCurrent, ds.ExposureTime = 499, 500
    t = scanner_tags(ds)
    assert t["mAs"] == 15 and t["ConvolutionKernel"] == "STANDARD" and "CTDIvol" not in t


def test_header_only_discovery_is_lazy(tiny_ct):
    root, _, _ = tiny_ct
    h = scan_dicom([root]).of_kind("ct")[0]
    assert "PixelData" not in h.ds and isinstance(h.path, Path)
