"""Style-set folder: round trip, atomic save, and validation errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from styleseg.errors import InputError
from styleseg.io.volume import Volume, read_nifti, write_nifti
from styleseg.labels import LabelSchema
from styleseg.style.styleset import StyleSet, StyleSlice, slice_volume


def _slice(index: int, with_label: bool = True) -> StyleSlice:
    rng = np.random.default_rng(index)
    img = Volume(rng.integers(-1000, 300, (1, 12, 10)).astype(np.int16), (0.8, 0.8, 3.0), (10.0, -5.0, 42.0))
    lab = None
    if with_label:
        arr = np.zeros((1, 12, 10), np.uint8)
        arr[0, 2:6, 2:5] = 1
        arr[0, 6:9, 5:8] = 3
        lab = img.with_array(arr)
    return StyleSlice(index=index, case_id=f"T{index:03d}", slice=4 + index, image=img, label=lab,
                      label_source="dataset:labelsRef" if with_label else None, cluster_size=5 + index,
                      tags={"protocol": "low-dose", "ConvolutionKernel": "B70f"}, why=f"medoid of cluster {index}")


def _set(n: int = 2, **kw) -> StyleSet:
    return StyleSet(dataset="/abs/target", schema=LabelSchema.default(), method="manual",
                    styles=[_slice(i, **kw) for i in range(n)])


def test_round_trip(tmp_path: Path) -> None:
    s = _set(2)
    out = s.save(tmp_path / "S", extra_files={"contact_sheet.png": b"png"})
    assert sorted(p.name for p in out.iterdir()) == [
        "contact_sheet.png", "style_00_image.nii.gz", "style_00_label.nii.gz", "style_01_image.nii.gz",
        "style_01_label.nii.gz", "styles.json"]
    d = json.loads((out / "styles.json").read_text())
    assert d["format_version"] == 1 and d["schema"]["heart"] == 3 and d["styles"][1]["cluster_size"] == 6
    assert d["styles"][0]["label"] == "style_00_label.nii.gz"
    t = StyleSet.load(out)
    assert t.dataset == "/abs/target" and t.method == "manual" and len(t) == 2
    for a, b in zip(s.styles, t.styles, strict=True):
        assert (a.index, a.case_id, a.slice, a.cluster_size, a.tags, a.why, a.label_source) == \
            (b.index, b.case_id, b.slice, b.cluster_size, b.tags, b.why, b.label_source)
        np.testing.assert_array_equal(a.image.array, b.image.array)
        np.testing.assert_array_equal(a.label.array, b.label.array)
        assert b.image.array.dtype == np.int16 and b.label.array.dtype == np.uint8
        assert np.allclose(b.image.spacing, (0.8, 0.8, 3.0)) and np.allclose(b.image.origin, (10.0, -5.0, 42.0))
    assert t.styles[0].hu.shape == (12, 10) and t.styles[0].label_map[3, 3] == 1


def test_missing_label_is_null_and_required(tmp_path: Path) -> None:
    out = _set(2, with_label=False).save(tmp_path / "S")
    d = json.loads((out / "styles.json").read_text())
    assert d["styles"][0]["label"] is None and d["styles"][0]["label_source"] is None
    t = StyleSet.load(out)
    assert t.styles[1].label is None
    with pytest.raises(InputError, match=r"styles\.json.*without a label map: style 0 \(T000 slice 4\)"):
        t.require_labels(out)
    _set(1).require_labels()  # with labels: fine


def test_save_refuses_existing_and_overwrite_keeps_other_files(tmp_path: Path) -> None:
    out = _set(2).save(tmp_path / "S", extra_files={"contact_sheet.png": b"old"})
    with pytest.raises(InputError, match="already exists"):
        _set(1).save(out)
    _set(1).save(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "contact_sheet.png", "style_00_image.nii.gz", "style_00_label.nii.gz", "styles.json"]
    assert (out / "contact_sheet.png").read_bytes() == b"old"
    assert not list(tmp_path.glob(".S*"))  # no temporary leftovers


def test_save_is_atomic_on_failure(tmp_path: Path) -> None:
    s = _set(2)
    s.styles[1].label.array[0, 0, 0] = 9  # not in the schema
    with pytest.raises(InputError, match=r"\[9\] are not in the label schema"):
        s.save(tmp_path / "S")
    assert not (tmp_path / "S").exists()
    with pytest.raises(ValueError, match="plain file name"):
        _set(1).save(tmp_path / "S", extra_files={"../x.png": b""})
    assert list(tmp_path.iterdir()) == []


def test_error_missing_image(tmp_path: Path) -> None:
    out = _set(2).save(tmp_path / "S")
    (out / "style_01_image.nii.gz").unlink()
    with pytest.raises(InputError, match=r"style_01_image\.nii\.gz: style 1 image file is missing"):
        StyleSet.load(out)


def test_error_label_grid_mismatch(tmp_path: Path) -> None:
    out = _set(2).save(tmp_path / "S")
    lab = read_nifti(out / "style_00_label.nii.gz")
    write_nifti(Volume(np.zeros((1, 11, 10), np.uint8), lab.spacing, lab.origin), out / "style_00_label.nii.gz")
    with pytest.raises(InputError, match=r"style_00_label\.nii\.gz: label grid does not match its image"):
        StyleSet.load(out)


def test_error_label_values_not_in_schema(tmp_path: Path) -> None:
    out = _set(1).save(tmp_path / "S")
    lab = read_nifti(out / "style_00_label.nii.gz")
    lab.array[0, 0, 0] = 7
    write_nifti(lab, out / "style_00_label.nii.gz")
    with pytest.raises(InputError, match=r"style_00_label\.nii\.gz: label values \[7\] are not in the label schema"):
        StyleSet.load(out)


def test_error_unknown_format_version_and_bad_json(tmp_path: Path) -> None:
    out = _set(1).save(tmp_path / "S")
    d = json.loads((out / "styles.json").read_text())
    d["format_version"] = 7
    (out / "styles.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match=r"styles\.json: unknown format_version 7"):
        StyleSet.load(out)
    (out / "styles.json").write_text("{")
    with pytest.raises(InputError, match=r"styles\.json: invalid JSON"):
        StyleSet.load(out)
    with pytest.raises(InputError, match="style-set folder does not exist"):
        StyleSet.load(tmp_path / "nope")


def test_error_multi_slice_image(tmp_path: Path) -> None:
    out = _set(1).save(tmp_path / "S")
    write_nifti(Volume(np.zeros((2, 12, 10), np.int16)), out / "style_00_image.nii.gz")
    with pytest.raises(InputError, match=r"style_00_image\.nii\.gz: style image must be a single slice"):
        StyleSet.load(out)


def test_slice_volume_keeps_geometry() -> None:
    vol = Volume(np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5), (0.5, 0.5, 2.0), (1.0, 2.0, 3.0))
    s = slice_volume(vol, 2)
    assert s.shape == (1, 4, 5) and s.array[0, 1, 2] == vol.array[2, 1, 2]
    assert np.allclose(s.origin, (1.0, 2.0, 7.0))
    assert np.allclose(s.index_to_physical([[0, 1, 2]]), vol.index_to_physical([[2, 1, 2]]))
    with pytest.raises(IndexError):
        slice_volume(vol, 3)
