"""Series discovery in unlabelled DICOM trees (io/series.py) and its use by the importer.

A synthetic archive (two patients; axial series with and without an RTSTRUCT, a localizer, a series with a
missing slice, a single-slice series, a secondary capture, oblique / sheared / sagittal series, files
shuffled and renamed) with hand-known answers, then the real COVID-19-NY-SBU and LUNG1-005 trees.
"""

from __future__ import annotations

import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from io_builders import box, need_data, write_ct_series, write_rtstruct

from styleseg.errors import InputError
from styleseg.io.dataset import Dataset
from styleseg.io.dicom import (
    SKIP_DUPLICATE,
    SKIP_LOCALIZER,
    SKIP_MISSING,
    SKIP_MIXED_SIZE,
    SKIP_NOT_AXIAL,
    SKIP_NOT_CT,
    SKIP_OBLIQUE,
    SKIP_SHEARED,
    SKIP_SPACING,
    SeriesProblem,
    check_series,
    scan_dicom,
)
from styleseg.io.importer import import_sources
from styleseg.io.series import discover_series

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def _restack(folder: Path, normal: np.ndarray, dz: float) -> None:
    """Rewrite ImagePositionPatient so slice k sits at origin + k dz normal (a true, unsheared oblique stack)."""
    files = sorted(folder.glob("*.dcm"), key=lambda f: int(pydicom.dcmread(f).InstanceNumber))
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = (np.array([-10.0, -20.0, 30.0]) + k * dz * normal).round(4).tolist()
        ds.save_as(f)


def _shuffle_into(staging: Path, dest: Path, seed: int) -> None:
    """Move every file of each patient folder under ``staging`` into ``dest/<patient>/`` under shuffled names."""
    rng = random.Random(seed)
    for patient in sorted(p for p in staging.iterdir() if p.is_dir()):
        files = sorted(f for f in patient.rglob("*") if f.is_file())
        numbers = list(range(len(files)))
        rng.shuffle(numbers)
        (dest / patient.name).mkdir(parents=True, exist_ok=True)
        for f, n in zip(files, numbers, strict=True):
            shutil.copy(f, dest / patient.name / f"f{n:03d}{f.suffix}")


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, dict]:
    """Two patients, ten series; ``ids[name]`` = write_ct_series' identifiers for each series."""
    st = tmp_path / "staging"
    z = np.zeros
    ids: dict[str, dict] = {}
    stored = (np.arange(4)[:, None, None] * 10 + z((1, 6, 6))).astype(np.int16)
    ids["A"] = write_ct_series(st / "P1" / "A", stored, patient="P1", SeriesNumber=2, Manufacturer="ACME",
                               ManufacturerModelName="Scan 64", ConvolutionKernel="B30f", KVP=120,
                               SeriesDescription="CHEST 2MM")
    ids["L"] = write_ct_series(st / "P1" / "L", z((1, 6, 6), np.int16), patient="P1", SeriesNumber=1,
                               ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                               ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    write_rtstruct(st / "P1" / "rs.dcm", ids["A"], {"Heart": [(1, box(-9.0, -6.0, -19.0, -17.0))]}, patient="P1")
    ids["B"] = write_ct_series(st / "P2" / "B", z((3, 6, 6), np.int16), patient="P2", SeriesNumber=2,
                               ConvolutionKernel="FC17", SeriesDescription="Body 2.0")
    ids["D"] = write_ct_series(st / "P2" / "D", z((1, 6, 6), np.int16), patient="P2", SeriesNumber=3)
    ids["C"] = write_ct_series(st / "P2" / "C", z((4, 6, 6), np.int16), patient="P2", SeriesNumber=4,
                               z_positions=[0.0, 2.0, 4.0, 8.0])  # the slice at 6 mm is missing
    ids["SC"] = write_ct_series(st / "P2" / "SC", z((1, 6, 6), np.int16), patient="P2", SeriesNumber=999,
                                SOPClassUID=SC_STORAGE)  # a dose screen saved with Modality CT
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    tilted = [1, 0, 0, 0, c, s]
    ids["OBL"] = write_ct_series(st / "P2" / "OBL", z((3, 6, 6), np.int16), patient="P2", SeriesNumber=5,
                                 ImageOrientationPatient=tilted)
    _restack(st / "P2" / "OBL", np.cross([1, 0, 0], [0, c, s]), 2.0)
    ids["TILT"] = write_ct_series(st / "P2" / "TILT", z((3, 6, 6), np.int16), patient="P2", SeriesNumber=6,
                                  ImageOrientationPatient=tilted)  # stacked along z, tilted planes: sheared
    ids["SAG"] = write_ct_series(st / "P2" / "SAG", z((3, 6, 6), np.int16), patient="P2", SeriesNumber=7,
                                 ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    _restack(st / "P2" / "SAG", np.array([1.0, 0.0, 0.0]), 2.0)
    (st / "P2" / "README.txt").write_text("exported by PACS")
    root = tmp_path / "archive"
    _shuffle_into(st, root, seed=1)
    return root, ids


def test_discovery_keeps_axial_ct_and_says_why_it_left_the_rest_out(archive):
    root, ids = archive
    scan = scan_dicom([root])
    index = discover_series(scan)
    kept = {s.series_uid: s for s in index.series}
    assert set(kept) == {ids[k]["series_uid"] for k in ("A", "B", "D")}
    assert {s.series_uid: s.reason for s in index.skipped} == {
        ids["L"]["series_uid"]: SKIP_LOCALIZER, ids["C"]["series_uid"]: SKIP_MISSING,
        ids["SC"]["series_uid"]: SKIP_NOT_CT, ids["OBL"]["series_uid"]: SKIP_OBLIQUE,
        ids["TILT"]["series_uid"]: SKIP_SHEARED, ids["SAG"]["series_uid"]: SKIP_NOT_AXIAL}
    why = {s.reason: s for s in index.skipped}
    assert "1 missing slice" in why[SKIP_MISSING].detail and why[SKIP_MISSING].folder == root / "P2"
    assert "20.0 deg" in why[SKIP_OBLIQUE].detail and "sagittal" in why[SKIP_NOT_AXIAL].detail
    assert "Secondary Capture" in why[SKIP_NOT_CT].detail
    # case ids: P1 has one kept series (the localizer does not count); P2 has two
    assert {s.case_id: s.series_uid for s in index.series} == {
        "P1": ids["A"]["series_uid"], "P2_20200101_s2": ids["B"]["series_uid"],
        "P2_20200101_s3": ids["D"]["series_uid"]}
    a = kept[ids["A"]["series_uid"]]
    # shuffled names: slices come back in position order, and the reference lists their SOPs in that order
    assert [float(h.ds.ImagePositionPatient[2]) for h in a.headers] == [30.0, 32.0, 34.0, 36.0]
    ref = a.reference()
    assert ref["sop_instance_uids"] == ids["A"]["sops"] and ref["n_slices"] == 4
    assert ref["StudyInstanceUID"] == ids["A"]["study"] and ref["FrameOfReferenceUID"] == ids["A"]["for_uid"]
    assert ref["SeriesNumber"] == 2 and ref["SeriesDescription"] == "CHEST 2MM"
    assert a.geometry["spacing"] == (0.8, 0.5, 2.0) and a.geometry["origin"] == (-10.0, -20.0, 30.0)
    assert kept[ids["D"]["series_uid"]].geometry["spacing"][2] == 2.0  # single slice: SliceThickness


def test_case_ids_do_not_depend_on_file_names_or_order(archive, tmp_path):
    root, _ = archive
    first = {s.series_uid: s.case_id for s in discover_series(scan_dicom([root])).series}
    other = tmp_path / "renamed"
    for f in sorted(root.rglob("*.dcm")):  # the same files, other names, other order
        dest = other / f"x{abs(hash(f.name)) % 997:03d}_{f.parent.name}_{f.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    second = {s.series_uid: s.case_id for s in discover_series(scan_dicom([other])).series}
    assert first == second


def test_colliding_ids_get_a_hash_of_the_series_uid(tmp_path):
    import hashlib

    a = write_ct_series(tmp_path / "a", np.zeros((1, 2, 2), np.int16), patient="Q", SeriesNumber=2)
    b = write_ct_series(tmp_path / "b", np.zeros((1, 2, 2), np.int16), patient="Q", SeriesNumber=2)
    write_ct_series(tmp_path / "c", np.zeros((1, 2, 2), np.int16), patient="p/1")
    write_ct_series(tmp_path / "d", np.zeros((1, 2, 2), np.int16), patient="P 1")
    ids = {s.series_uid: s.case_id for s in discover_series(scan_dicom([tmp_path])).series}
    h = {k: hashlib.sha1(v["series_uid"].encode()).hexdigest()[:6] for k, v in (("a", a), ("b", b))}
    assert ids[a["series_uid"]] == f"Q_20200101_s2_{h['a']}" and ids[b["series_uid"]] == f"Q_20200101_s2_{h['b']}"
    others = sorted(v for v in ids.values() if not v.startswith("Q"))
    # 'p_1' and 'P_1' differ only by case: both get their hash, so none overwrites the other on macOS
    assert len({o.lower() for o in others}) == 2 and all(o.lower().startswith("p_1_") for o in others)


def test_copies_of_one_instance_count_once(tmp_path):
    ct = write_ct_series(tmp_path / "s", np.zeros((3, 2, 2), np.int16))
    shutil.copy(tmp_path / "s" / "img001.dcm", tmp_path / "s" / "copy_of_img001.dcm")
    (s,) = discover_series(scan_dicom([tmp_path])).series
    assert [h.sop_instance_uid for h in s.headers] == ct["sops"]
    assert any("copy" in n for n in s.notes)


@pytest.mark.parametrize(("zs", "rows", "reason", "text"), [
    ([0.0, 2.0, 4.0, 10.0], 2, SKIP_MISSING, "2 missing slice(s)"),
    ([0.0, 2.0, 3.1, 5.0], 2, SKIP_SPACING, "irregular steps"),
    ([0.0, 2.0, 2.0], 2, SKIP_DUPLICATE, "same position"),
    ([0.0, 2.0], 3, SKIP_MIXED_SIZE, "slice size"),
])
def test_check_series_reasons(tmp_path, zs, rows, reason, text):
    write_ct_series(tmp_path / "s", np.zeros((len(zs), 2, 2), np.int16), z_positions=zs)
    if rows != 2:  # one more slice of another size, in the same series
        uid = pydicom.dcmread(tmp_path / "s" / "img001.dcm").SeriesInstanceUID
        write_ct_series(tmp_path / "t", np.zeros((1, rows, 2), np.int16), z_positions=[9.0], series_uid=uid)
    problem = check_series(scan_dicom([tmp_path]).of_kind("ct"))
    assert isinstance(problem, SeriesProblem) and problem.reason == reason and text in problem.problem


def test_import_of_an_unlabelled_tree(archive, tmp_path):
    root, ids = archive
    rep = import_sources([root], tmp_path / "ds", derive_body=False)
    ds = Dataset(tmp_path / "ds")
    assert [c.case_id for c in ds] == ["P1", "P2_20200101_s2", "P2_20200101_s3"]
    p1, b = ds.case("P1"), ds.case("P2_20200101_s2")
    assert p1.labels == "labelsTr" and p1.annotated == ("heart",)  # the RTSTRUCT found its series
    assert b.labels is None and ds.case("P2_20200101_s3").labels is None
    assert b.extras["scanner"]["ConvolutionKernel"] == "FC17" and b.extras["scanner"]["SeriesDescription"] == "Body 2.0"
    assert p1.extras["scanner"]["ManufacturerModelName"] == "Scan 64" and p1.extras["scanner"]["KVP"] == 120
    ser = b.extras["series"]
    assert ser["SeriesInstanceUID"] == ids["B"]["series_uid"] and ser["sop_instance_uids"] == ids["B"]["sops"]
    assert ser["FrameOfReferenceUID"] == ids["B"]["for_uid"] and ser["StudyInstanceUID"] == ids["B"]["study"]
    # source_files: the slice files in slice order (what write_seg takes); the RTSTRUCT is listed apart
    zs = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in b.extras["source_files"]]
    assert zs == [30.0, 32.0, 34.0] and len(p1.extras["structure_files"]) == 1
    reasons = sorted(r.split(" left out: ")[1].split(":")[0] for _, r in rep.skipped)
    assert reasons == sorted([SKIP_LOCALIZER, SKIP_MISSING, SKIP_OBLIQUE, SKIP_SHEARED, SKIP_NOT_AXIAL])
    assert len(ds.meta["skipped"]) == 5 and any(SKIP_NOT_CT in n for n in rep.notes)
    assert len(rep.ignored) == 1 and rep.ignored[0].endswith(".txt")  # the README, renamed by the shuffle


def test_rtstruct_of_a_left_out_series_is_an_error_or_skipped(tmp_path):
    ct = write_ct_series(tmp_path / "src" / "ct", np.zeros((3, 6, 6), np.int16), z_positions=[0.0, 2.0, 6.0])
    write_ct_series(tmp_path / "src" / "ok", np.zeros((2, 6, 6), np.int16), patient="P2")
    rs = write_rtstruct(tmp_path / "src" / "rs.dcm", ct, {"Heart": [(0, box(-9.0, -6.0, -19.0, -17.0))]})
    with pytest.raises(InputError, match="was left out") as e:
        import_sources([tmp_path / "src"], tmp_path / "ds")
    assert e.value.path == rs and SKIP_MISSING in str(e.value)
    rep = import_sources([tmp_path / "src"], tmp_path / "ds", skip_bad=True)
    assert [c.case_id for c in rep.cases] == ["P2"] and str(rs) in dict(rep.skipped)


# --- real data ----------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_covid_one_case_per_series_as_pydicom_groups_them(tmp_path):
    src = need_data("dicom", "covid19-ny-sbu-axial")
    groups: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for f in sorted(src.rglob("*.dcm")):
        d = pydicom.dcmread(f, stop_before_pixels=True)
        groups[str(d.SeriesInstanceUID)].append(d)
    axial_ct = {u for u, ds in groups.items() if ds[0].Modality == "CT" and "LOCALIZER" not in ds[0].ImageType}
    index = discover_series(scan_dicom([src]))
    assert len(index.series) == len(axial_ct) == 20 and not index.skipped
    assert {s.series_uid for s in index.series} == axial_ct
    ids = [s.case_id for s in index.series]
    assert len(set(ids)) == 20 and all(i.replace("_", "").replace("-", "").isalnum() for i in ids)
    assert all(len(s.headers) == 1 for s in index.series)  # single-slice series are kept
    by_id = {s.case_id: s for s in index.series}
    s = by_id["A072894_19001203_s601"]  # the GE "DERIVED SECONDARY REFORMATTED AVERAGE" axial slab
    assert s.reference()["SeriesDescription"] == "CHEST AX" and s.reference()["SeriesNumber"] == 601
    for s in index.series:
        d = groups[s.series_uid][0]
        assert s.reference()["FrameOfReferenceUID"] == d.FrameOfReferenceUID
        assert s.case_id.startswith(f"{d.PatientID}_{d.StudyDate}_s{d.SeriesNumber}")
    # the import: an unlabelled dataset, one case per series, tags and the series reference in the extras
    import_sources([src], tmp_path / "covid")
    ds = Dataset(tmp_path / "covid")
    assert sorted(c.case_id for c in ds) == sorted(ids)
    for c in ds:
        d = groups[c.extras["series"]["SeriesInstanceUID"]][0]
        assert c.labels is None and c.extras["series"]["sop_instance_uids"] == [d.SOPInstanceUID]
        assert c.extras["series"]["StudyInstanceUID"] == d.StudyInstanceUID
        sc = c.extras["scanner"]
        assert sc["Manufacturer"] == d.Manufacturer and sc["ConvolutionKernel"] == d.ConvolutionKernel
        assert sc["KVP"] == float(d.KVP) and sc["SliceThickness"] == float(d.SliceThickness)
        assert sc["ManufacturerModelName"] == d.ManufacturerModelName and len(sc["PixelSpacing"]) == 2
        assert pydicom.dcmread(c.extras["source_files"][0], stop_before_pixels=True).SOPInstanceUID == d.SOPInstanceUID


@pytest.mark.realdata
def test_lung005_stays_one_labelled_series(tmp_path):
    src = need_data("dicom", "LUNG1-005")
    scan = scan_dicom([src])
    index = discover_series(scan)
    assert [s.case_id for s in index.series] == ["LUNG1-005"] and not index.skipped
    (s,) = index.series
    assert len(s.headers) == 91 and s.geometry["spacing"][2] == pytest.approx(3.0)
    z = [float(h.ds.ImagePositionPatient[2]) for h in s.headers]
    assert np.allclose(np.diff(z), 3.0)
    assert len(scan.of_kind("rtstruct")) == 1 and len(scan.of_kind("seg")) == 1
