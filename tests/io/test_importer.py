"""import_sources on synthetic inputs: labels, annotated/derived bookkeeping, and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from io_builders import box, write_ct_series, write_rtstruct

from styleseg.errors import InputError
from styleseg.io.dataset import Dataset
from styleseg.io.importer import import_sources, load_structure_map
from styleseg.io.volume import Volume, write_nifti
from styleseg.labels import LabelSchema


def _no_leftovers(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}*"))


def test_dicom_case_with_rtstruct(tiny_ct, tmp_path):
    root, ct, stored = tiny_ct
    rep = import_sources([root], tmp_path / "ds", derive_body=False)
    ds = Dataset(tmp_path / "ds")
    (case,) = ds.cases
    assert case.case_id == "P1" and case.labels == "labelsTr"
    assert case.annotated == ("lung_left",) and case.derived == ()
    assert case.extras["scanner"]["ConvolutionKernel"] == "B30f"
    assert case.extras["rois"] == {"Lung_L": "lung_left", "GTV-1": None}
    img = ds.load_image("P1")
    lab = ds.load_label("P1", img)
    assert np.array_equal(img.array, stored - 1024)
    assert lab.array.sum() == 24 * 1 and lab.array[1, 3:9, 2:6].min() == 1  # 6 x 4 pixels of value 1
    assert rep.cases[0].annotated == ("lung_left",)


def test_body_derived_and_listed_as_annotated(tmp_path):
    hu = np.full((2, 20, 20), -1000, np.int16)
    hu[:, 4:16, 4:16] = 40  # a soft-tissue block = the body
    ct = write_ct_series(tmp_path / "src" / "ct", hu + 1024, spacing=(1.0, 1.0), origin=(0.0, 0.0, 0.0))
    write_rtstruct(tmp_path / "src" / "rs.dcm", ct, {"Heart": [(0, box(7.5, 10.5, 7.5, 10.5))]})
    import_sources([tmp_path / "src"], tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    c = ds.cases[0]
    assert c.annotated == ("heart", "body") and c.derived == ("body",)
    lab = ds.load_label(c.case_id).array
    assert (lab == 3).sum() == 9 and (lab == 6).sum() == 2 * 144 - 9  # heart: pixels 8..10 squared


def test_structure_map_toml(tiny_ct, tmp_path):
    root, _, _ = tiny_ct
    m = tmp_path / "MAP.toml"
    m.write_text('[structures]\n"GTV-1" = "heart"\n')
    assert load_structure_map(m) == {"GTV-1": "heart"}
    import_sources([root], tmp_path / "ds", structure_map=load_structure_map(m), derive_body=False)
    assert Dataset(tmp_path / "ds").cases[0].annotated == ("lung_left", "heart")


def test_unlabelled_series_has_no_label_and_no_body(tmp_path):
    write_ct_series(tmp_path / "s", np.zeros((2, 4, 4), np.int16))
    import_sources([tmp_path / "s"], tmp_path / "ds")
    c = Dataset(tmp_path / "ds").cases[0]
    assert c.labels is None and c.annotated == () and c.derived == ()


def test_nifti_pair_and_explicit_pair(tmp_path):
    img = Volume(np.zeros((2, 5, 6), np.int16), (0.7, 0.7, 2.5), (1.0, 2.0, 3.0))
    lab = img.with_array(np.zeros((2, 5, 6), np.uint8))
    lab.array[0, 1:3, 1:3] = 5
    write_nifti(img, tmp_path / "src" / "A_ct.nii.gz")
    write_nifti(lab, tmp_path / "src" / "A_labels.nii.gz")
    write_nifti(img, tmp_path / "other" / "scan.nii.gz")
    write_nifti(lab, tmp_path / "other" / "mask.nii.gz")
    rep = import_sources([tmp_path / "src", (tmp_path / "other" / "scan.nii.gz", tmp_path / "other" / "mask.nii.gz")],
                         tmp_path / "ds", derive_body=False)
    ds = Dataset(tmp_path / "ds")
    assert sorted(c.case_id for c in ds) == ["A", "scan"]
    assert all(c.annotated == ("spinal_cord",) for c in ds)
    assert rep.ignored == []


# --- bad input: one test per case -------------------------------------------------------------------


def test_bad_truncated_dicom(tiny_ct, tmp_path):
    root, _, _ = tiny_ct
    f = root / "ct" / "img002.dcm"
    f.write_bytes(f.read_bytes()[:-50])
    with pytest.raises(InputError, match="truncated") as e:
        import_sources([root], tmp_path / "ds")
    assert e.value.path == f and str(f) in str(e.value)
    assert _no_leftovers(tmp_path, "ds")


def test_bad_non_dicom_file_in_tree(tiny_ct, tmp_path):
    root, _, _ = tiny_ct
    (root / "ct" / "README.txt").write_text("exported by PACS")
    rep = import_sources([root], tmp_path / "ok", derive_body=False)  # other files: ignored quietly, listed
    assert rep.ignored == [str(root / "ct" / "README.txt")] and len(rep.cases) == 1
    bogus = root / "ct" / "broken.dcm"  # claims to be DICOM and is not
    bogus.write_bytes(b"\x00" * 50)
    with pytest.raises(InputError, match="not a DICOM file") as e:
        import_sources([root], tmp_path / "ds")
    assert e.value.path == bogus and _no_leftovers(tmp_path, "ds")


def test_bad_rtstruct_without_its_series(tiny_ct, tmp_path):
    root, _, _ = tiny_ct
    write_ct_series(tmp_path / "other", np.zeros((1, 4, 4), np.int16), patient="P2")
    rs = root / "rt" / "rs.dcm"
    with pytest.raises(InputError, match="not among the inputs") as e:
        import_sources([rs, tmp_path / "other"], tmp_path / "ds")
    assert e.value.path == rs and _no_leftovers(tmp_path, "ds")


def test_bad_label_grid_differs_from_image(tmp_path):
    write_nifti(Volume(np.zeros((2, 5, 6), np.int16), (1.0, 1.0, 2.0)), tmp_path / "src" / "A_ct.nii.gz")
    write_nifti(Volume(np.zeros((2, 5, 6), np.uint8), (1.0, 1.0, 3.0)), tmp_path / "src" / "A_labels.nii.gz")
    with pytest.raises(InputError, match="label grid does not match") as e:
        import_sources([tmp_path / "src"], tmp_path / "ds")
    assert e.value.path == tmp_path / "src" / "A_labels.nii.gz" and _no_leftovers(tmp_path, "ds")


def test_bad_nonexistent_path(tmp_path):
    with pytest.raises(InputError, match="does not exist") as e:
        import_sources([tmp_path / "nope"], tmp_path / "ds")
    assert e.value.path == tmp_path / "nope" and _no_leftovers(tmp_path, "ds")


def test_bad_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="empty") as e:
        import_sources([tmp_path / "empty"], tmp_path / "ds")
    assert e.value.path == tmp_path / "empty"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no CT series or NIfTI image") as e:
        import_sources([tmp_path / "junk"], tmp_path / "ds")
    assert e.value.path == tmp_path / "junk" and _no_leftovers(tmp_path, "ds")


def test_skip_bad_imports_the_good_and_lists_the_bad(tiny_ct, tmp_path):
    root, _, _ = tiny_ct
    good = tmp_path / "good"
    write_ct_series(good, np.zeros((2, 4, 4), np.int16), patient="P2")
    bad = root / "ct" / "img001.dcm"
    bad.write_bytes(bad.read_bytes()[:200])
    write_nifti(Volume(np.zeros((2, 5, 6), np.int16), (1.0, 1.0, 2.0)), tmp_path / "n" / "B_ct.nii.gz")
    write_nifti(Volume(np.zeros((2, 5, 6), np.uint8), (1.0, 1.0, 3.0)), tmp_path / "n" / "B_labels.nii.gz")
    rep = import_sources([root, good, tmp_path / "n"], tmp_path / "ds", skip_bad=True)
    assert [c.case_id for c in rep.cases] == ["P2"]
    skipped = dict(rep.skipped)
    assert str(bad) in skipped  # the truncated slice
    assert str(root / "ct") in skipped  # ... so its series (P1) was left out
    assert str(tmp_path / "n" / "B_labels.nii.gz") in skipped
    assert str(root / "rt" / "rs.dcm") in skipped  # its CT series is gone
    ds = Dataset(tmp_path / "ds")
    assert [c.case_id for c in ds] == ["P2"] and len(ds.meta["skipped"]) == len(rep.skipped)


def test_schema_without_body_derives_nothing(tiny_ct, tmp_path):
    root, _, _ = tiny_ct
    schema = LabelSchema((("lung_left", 1), ("lung_right", 2)))
    import_sources([root], tmp_path / "ds", schema=schema)
    assert Dataset(tmp_path / "ds").cases[0].derived == ()
