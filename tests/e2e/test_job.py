"""The job path end to end at toy size (issue #15): an unlabelled target of several DICOM series (one beside a
localizer, two of one patient, one at 0.7 mm) and a NIfTI image -> styles -> predicted label maps written for
correction (the run pauses) -> "corrected" files dropped in -> the re-run continues -> the whole target segmented
(NIfTI on each grid + DICOM SEG that overlays its series) -> QC table and report; then what re-runs, bad corrected
files, shards and reference labels do. Tiny networks (seconds each); the plumbing is checked, not accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from job_builders import CASES, DICOM_CASES, build

from styleseg.errors import ConfigError, InputError
from styleseg.io.dataset import Dataset
from styleseg.io.volume import read_nifti, write_nifti
from styleseg.pipeline import load_experiment, run_pipeline
from styleseg.pipeline.style_labels import REVIEW_DIR, label_file

TOML = """
name = "toy job"
preset = "quick"
seed = 1
n_styles = 2
arms = ["baseline", "styleseg"]

[data]
source = ["{source}"]
target = ["{target}", "{nifti}"]
{extra_data}

[select]
candidates_per_case = 2
use_vgg = false

[generators]
steps = 2
crop = 32
base = 4
n_res = 1
checkpoint_every = 1

[train_seg]
epochs = 2
steps_per_epoch = 10
crop = 64
batch_size = 4
base_channels = 8
depth = 3
lr = 0.01
val_fraction = 0.0
position = true

[evaluate]
n_boot = 100

[job]
max_thumbnails = 3
{extra_job}
"""


def _toml(root: Path, data: dict, extra_data: str = "", extra_job: str = "") -> Path:
    p = root / "job.toml"
    p.write_text(TOML.format(source=data["source"], target=data["target"], nifti=data["target_nifti"],
                             extra_data=extra_data, extra_job=extra_job))
    return p


def _run(root: Path, run: Path, **kw) -> dict:
    return run_pipeline(load_experiment(root / "job.toml"), run, **kw)


def _ran(summary: dict) -> set[str]:
    return {n for n, t in summary["timings"].items() if not t["skipped"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("job")
    d = build(root)
    _toml(root, d)
    return {**d, "root": root}


@pytest.fixture(scope="module")
def paused(data) -> Path:
    """The first run: it stops at the human step."""
    run = data["root"] / "run"
    s = _run(data["root"], run)
    assert s["paused"] and s["review"] == str(run / REVIEW_DIR)
    return run


def _correct(run: Path, truth: dict) -> dict[int, np.ndarray]:
    """Drop in a 'corrected' label map for every style slice: the phantom's true labels of that slice."""
    review = json.loads((run / REVIEW_DIR / "review.json").read_text())
    out = {}
    for st in review["styles"]:
        img = read_nifti(run / REVIEW_DIR / st["image"])
        lab = truth[st["case_id"]][st["slice"]].astype(np.uint8)
        write_nifti(img.with_array(lab[None]), run / REVIEW_DIR / st["label"])
        out[st["index"]] = lab
    return out


@pytest.fixture(scope="module")
def finished(data, paused) -> Path:
    run = data["root"] / "done"
    shutil.copytree(paused, run)
    _correct(run, data["truth"])
    s = _run(data["root"], run)
    assert "paused" not in s and s["report"] == str(run / "report.html")
    assert {"styles", "generators", "augment", "train_styleseg", "segment", "qc", "report"} <= _ran(s)
    assert "train_baseline" not in _ran(s) and "pick_styles" not in _ran(s)  # done before the pause: kept
    return run


@pytest.fixture
def copy(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
def test_the_first_run_writes_the_predicted_style_labels_for_correction_and_stops(paused, data):
    review = json.loads((paused / REVIEW_DIR / "review.json").read_text())
    target = Dataset(paused / "data" / "target")
    assert sorted(c.case_id for c in target.cases) == sorted(CASES)  # the localizer is no case
    assert len(review["styles"]) == 2 and review["mode"] == "correct"
    for st in review["styles"]:
        k = st["index"]
        img = read_nifti(paused / REVIEW_DIR / st["image"])
        pred = read_nifti(paused / REVIEW_DIR / st["predicted"])
        assert img.shape[0] == 1 and pred.same_grid(img) and pred.array.dtype == np.uint8
        case = target.load_image(st["case_id"])
        np.testing.assert_array_equal(img.array[0], case.array[st["slice"]])  # the slice itself, at its place
        assert np.allclose(img.origin, case.index_to_physical([[st["slice"], 0, 0]])[0], atol=1e-3)
        assert (paused / REVIEW_DIR / f"style_{k:02d}_overlay.png").stat().st_size > 1000
        if st["case_id"] in DICOM_CASES:  # the prediction as DICOM SEG on the original slice
            seg = pydicom.dcmread(paused / REVIEW_DIR / f"style_{k:02d}_predicted.dcm")
            src = pydicom.dcmread(st["source_file"], stop_before_pixels=True)
            assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID == data["ids"][st["case_id"]]["for_uid"]
            ref = seg.ReferencedSeriesSequence[0]
            assert ref.SeriesInstanceUID == src.SeriesInstanceUID
            assert [r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence] == [src.SOPInstanceUID]
    text = (paused / REVIEW_DIR / "README.txt").read_text()
    assert all(str(paused / REVIEW_DIR / label_file(s["index"])) in text for s in review["styles"])
    done = {p.stem for p in (paused / "stages").glob("*.json")}
    assert {"data", "split", "train_baseline", "pick_styles"} <= done and not done & {"styles", "generators"}


@pytest.mark.slow
def test_the_cli_pauses_with_status_3_and_names_the_missing_files(paused, data, tmp_path):
    from typer.testing import CliRunner

    from styleseg.cli import app

    run = tmp_path / "run"
    shutil.copytree(paused, run)
    (run / REVIEW_DIR / "style_00_label.nii.gz").write_bytes((run / REVIEW_DIR / "style_00_predicted.nii.gz")
                                                             .read_bytes())  # one accepted as predicted
    r = CliRunner().invoke(app, ["run", str(data["root"] / "job.toml"), "--out", str(run)])
    assert r.exit_code == 3, r.output
    out = " ".join(r.output.split())
    assert "1 of 2 style label map(s) still missing" in out and "style_01_label.nii.gz" in out
    assert "style_00_label.nii.gz," not in out.split("still missing")[1].split(".")[0]


@pytest.mark.slow
def test_the_corrected_maps_are_used_and_the_whole_target_is_segmented(finished, data):
    from styleseg.style.styleset import StyleSet

    styles = StyleSet.load(finished / "styles")
    review = json.loads((finished / REVIEW_DIR / "review.json").read_text())
    for s, st in zip(styles.styles, review["styles"], strict=True):
        assert s.label_source == f"corrected ({finished / REVIEW_DIR / st['label']})"
        want = data["truth"][st["case_id"]][st["slice"]]
        if st["case_id"] == "P3":  # 0.7 mm: resampled to the source's 0.9 mm for the generators
            assert s.tags["resampled_from_mm"] == [0.7, 0.7] and s.image.spacing[0] > 0.85
        else:
            np.testing.assert_array_equal(s.label_map, want)
    target = Dataset(finished / "data" / "target")
    segs = finished / "job" / "segmentations"
    for cid in CASES:
        lab = read_nifti(segs / f"{cid}.nii.gz")
        assert lab.same_grid(target.load_image(cid)) and lab.array.dtype == np.uint8
        assert (segs / f"{cid}.dcm").exists() == (cid in DICOM_CASES)  # DICOM SEG for DICOM inputs only
        assert (finished / "job" / "compare" / "styleseg" / f"{cid}.nii.gz").exists()
    lungs = [int(np.isin(read_nifti(segs / f"{c}.nii.gz").array, (1, 2)).sum()) for c in CASES]
    assert min(lungs) > 0  # the toy model finds lung on every case, the 0.7 mm one included
    model = json.loads((finished / "job" / "model.json").read_text())
    assert model["arm"] == "baseline" and model["rule"] == "default" and model["compare"] == "styleseg"


@pytest.mark.slow
def test_the_qc_table_has_every_case_worst_first_with_the_values_of_qc_case(finished):
    import csv

    from styleseg.eval.qc import qc_case, qc_columns

    rows = list(csv.DictReader(open(finished / "job" / "qc" / "qc.csv")))
    assert [r["case"] for r in rows] != [] and sorted(r["case"] for r in rows) == sorted(CASES)
    assert list(rows[0]) == qc_columns()
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    job = finished / "job"
    for r in rows:
        rec = qc_case(r["case"], read_nifti(job / "segmentations" / f"{r['case']}.nii.gz"),
                      other=read_nifti(job / "compare" / "styleseg" / f"{r['case']}.nii.gz"))
        assert float(r["score"]) == rec.score and r["flags"] == ";".join(f.key for f in rec.flags)
        assert r["style"] in ("style 0", "style 1")
    qc = json.loads((job / "qc" / "qc.json").read_text())
    flagged = [r["case"] for r in rows if r["flags"]][:3]
    assert sorted(qc["thumbnails"]) == sorted(flagged)
    text = (finished / "report.html").read_text()
    assert "Quality control without labels" in text and "Which model segments the collection" in text
    assert all(f"<td class=l>{c}</td>" in text for c in CASES)
    assert "predicted by the source-only model and corrected by a person" in text
    from styleseg.pipeline.style_labels import absent_structures
    from styleseg.style.styleset import StyleSet

    prov = json.loads((job / "style_labels.json").read_text())["styles"]
    used = StyleSet.load(finished / "styles")
    assert [p["absent"] for p in prov] == [absent_structures(s, used.schema) for s in used.styles]
    assert "structures absent" in text


@pytest.mark.slow
def test_the_dicom_seg_of_each_series_reads_back_and_overlays_it(finished, data):
    import highdicom as hd

    from styleseg.labels import LabelSchema

    schema = LabelSchema.default()
    target = Dataset(finished / "data" / "target")
    for cid in DICOM_CASES:
        path = finished / "job" / "segmentations" / f"{cid}.dcm"
        files = target.case(cid).extras["source_files"]
        src = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        seg = pydicom.dcmread(path)
        assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
        assert seg.StudyInstanceUID == src[0].StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == data["ids"][cid]["series_uid"]
        by_sop = {d.SOPInstanceUID: d for d in src}
        for fg in seg.PerFrameFunctionalGroupsSequence:
            sop = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            assert np.allclose(fg.PlanePositionSequence[0].ImagePositionPatient, by_sop[sop].ImagePositionPatient)
        lab = read_nifti(finished / "job" / "segmentations" / f"{cid}.nii.gz").array
        hseg = hd.seg.segread(path)
        names = [s.SegmentLabel for s in seg.SegmentSequence]
        px = np.asarray(hseg.get_pixels_by_source_instance([d.SOPInstanceUID for d in src],
                                                           segment_numbers=list(range(1, len(names) + 1)),
                                                           assert_missing_frames_are_empty=True)) > 0
        for i, n in enumerate(names):
            np.testing.assert_array_equal(px[..., i], lab == schema.value(n), err_msg=f"{cid} {n}")
        assert set(names) == {schema.name(int(v)) for v in np.unique(lab) if v}


@pytest.mark.slow
def test_a_rerun_does_nothing_and_only_changed_content_retrains(copy, data):
    s = _run(data["root"], copy)
    assert s["all_skipped"]
    review = copy / REVIEW_DIR
    f = review / "style_01_label.nii.gz"
    lab = read_nifti(f)
    write_nifti(lab.with_array(lab.array.astype(np.int16)), f)  # same map, other bytes: nothing to redo
    assert _run(data["root"], copy)["all_skipped"]
    arr = lab.array.copy()
    arr[arr == 6] = 0  # a person removed the body label
    write_nifti(lab.with_array(arr), f)
    ran = _ran(_run(data["root"], copy))
    assert {"styles", "generators", "augment", "train_styleseg", "segment", "qc"} <= ran
    assert not ran & {"data", "split", "train_baseline", "pick_styles"}


def _bad_grid(lab):
    from styleseg.io.volume import Volume

    return Volume(np.ones((1, 20, 20), np.uint8), lab.spacing, lab.origin, lab.direction)


def _bad_values(lab):
    a = lab.array.copy()
    a[0, :4, :4] = 9
    return lab.with_array(a)


def _empty(lab):
    return lab.with_array(np.zeros_like(lab.array))


@pytest.mark.slow
@pytest.mark.parametrize("make,match", [
    (_bad_grid, r"label map grid .* is not the style slice's grid"),
    (_bad_values, r"label values \[9\] are not in the label schema"),
    (_empty, r"is empty \(all background\)"),
    (None, r"not a readable NIfTI label map"),
])
def test_a_bad_corrected_file_is_refused_naming_it(paused, data, tmp_path, make, match):
    run = tmp_path / "run"
    shutil.copytree(paused, run)
    _correct(run, data["truth"])
    f = run / REVIEW_DIR / "style_01_label.nii.gz"
    if make is None:
        f.write_bytes(b"this is a PNG, not NIfTI\x89PNG")
    else:
        lab = read_nifti(f)
        f.unlink()
        write_nifti(make(lab), f)
    with pytest.raises(InputError, match=match) as e:
        _run(data["root"], run)
    assert e.value.path == f
    assert not (run / "styles").exists() and not (run / "stages" / "styles.json").exists()  # nothing half-written


@pytest.mark.slow
def test_shards_then_a_final_run_give_the_single_process_outputs(copy, data, finished):
    job = copy / "job"
    for p in (job / "segmentations", job / "compare", job / "qc"):
        shutil.rmtree(p)
    for stage in ("segment", "qc", "report"):
        (copy / "stages" / f"{stage}.json").unlink()
    s = _run(data["root"], copy, until="segment")
    assert s["stopped_before"] == "segment" and not list((job / "segmentations").glob("*.nii.gz"))
    a = _run(data["root"], copy, shard=(0, 2))
    b = _run(data["root"], copy, shard=(1, 2))
    assert sorted(a["shard"]["baseline"]["done"] + b["shard"]["baseline"]["done"]) == sorted(CASES)
    assert not (copy / "stages" / "segment.json").exists()  # a shard never marks the stage finished
    final = _run(data["root"], copy)
    assert {"segment", "qc", "report"} <= _ran(final)
    rep = json.loads((job / "segment_report.json").read_text())["baseline"]
    assert rep["done"] == [] and sorted(rep["skipped"]) == sorted(CASES)  # nothing segmented twice
    for cid in CASES:
        np.testing.assert_array_equal(read_nifti(job / "segmentations" / f"{cid}.nii.gz").array,
                                      read_nifti(finished / "job" / "segmentations" / f"{cid}.nii.gz").array)
    assert (job / "qc" / "qc.csv").read_text() == (finished / "job" / "qc" / "qc.csv").read_text()


@pytest.mark.slow
def test_given_labels_are_asked_for_by_slice_and_file_and_earlier_files_kept(paused, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(paused, run)
    (run / REVIEW_DIR / "style_00_label.nii.gz").write_bytes((run / REVIEW_DIR / "style_00_predicted.nii.gz")
                                                             .read_bytes())
    old = json.loads((run / REVIEW_DIR / "review.json").read_text())["picked"]
    _toml(data["root"], data, extra_job='style_labels = "given"')
    try:
        s = _run(data["root"], run)
    finally:
        _toml(data["root"], data)
    review = json.loads((run / REVIEW_DIR / "review.json").read_text())
    assert review["mode"] == "given" and review["picked"] != old
    for st in review["styles"]:
        assert f"case {st['case_id']}, slice {st['slice']} -> {run / REVIEW_DIR / st['label']}" in s["paused"]
        assert not (run / REVIEW_DIR / f"style_{st['index']:02d}_predicted.nii.gz").exists()
    assert "Draw a label map" in s["paused"]
    assert (run / REVIEW_DIR / f"old-{old}" / "style_00_label.nii.gz").exists()  # a person's work is never lost


def test_a_shard_before_the_preparation_is_refused(data, tmp_path):
    with pytest.raises(ConfigError, match=r"stage 'data' is not finished.*--until segment"):
        _run(data["root"], tmp_path / "fresh", shard=(0, 2))


@pytest.mark.slow
def test_reference_labels_measure_the_arms_and_choose_the_model(copy, data, tmp_path):
    """Labels for two target cases: every arm is evaluated there (and only there), the model is chosen by
    Dice, the style pool leaves those cases out, and the predicted style labels are stated as such."""
    from styleseg.io.dataset import DatasetWriter
    from styleseg.labels import LabelSchema

    target = Dataset(copy / "data" / "target")
    ref = tmp_path / "reference"
    with DatasetWriter(ref, "reference", LabelSchema.default()) as w:
        for cid in ("P1", "T4"):
            img = target.load_image(cid)
            w.add_case(cid, img, img.with_array(data["truth"][cid]))
    _toml(data["root"], data, f'reference = "{ref}"', 'style_labels = "predicted"')
    try:
        s = _run(data["root"], copy)
    finally:
        _toml(data["root"], data)
    assert "data" not in _ran(s)  # adding references does not re-import
    split = json.loads((copy / "split.json").read_text())
    assert split["reference"] == ["P1", "T4"] and not set(split["style_pool"]) & {"P1", "T4"}
    scores = {}
    for arm in ("baseline", "styleseg"):
        m = json.loads((copy / "arms" / arm / "metrics.json").read_text())
        assert m["cases"] == ["P1", "T4"]
        scores[arm] = np.mean([d["dice"]["mean"] for d in m["mean"].values()])
    model = json.loads((copy / "job" / "model.json").read_text())
    assert model["rule"] == "measured" and model["arm"] == max(scores, key=scores.get)
    assert model["scores"] == pytest.approx(scores)
    text = (copy / "report.html").read_text()
    assert "Metrics per arm" in text and "NOT corrected" in text
    assert len(list((copy / "job" / "segmentations").glob("*.nii.gz"))) == len(CASES)  # still every case
