"""nnU-Net v2 reads styleseg datasets: its own integrity check and fingerprint extraction on what styleseg writes.

The README promises that a styleseg dataset (``styleseg import``, ``styleseg augment``) "can be handed straight to
nnU-Net". These tests hand one over: the dataset is written straight into ``nnUNet_raw/DatasetNNN_Name``, and
nnU-Net's ``nnUNetv2_extract_fingerprint -d NNN --verify_dataset_integrity`` (its integrity check, then its
fingerprint: what it reads of every training case) must pass and must see the cases, spacings and intensities
that styleseg wrote. Needs the ``nnunet`` extra (``pip install -e '.[nnunet]'``, ``make install-nnunet``) and
the real CT in ../shared/data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("nnunetv2", reason="nnU-Net v2 is not installed: pip install -e '.[nnunet]' (make install-nnunet)")

from styleseg.cli import app  # noqa: E402
from styleseg.io.dataset import Dataset, DatasetWriter, subset_dataset  # noqa: E402
from styleseg.io.volume import Volume  # noqa: E402
from styleseg.labels import LabelSchema  # noqa: E402

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "nsclc"
LABELLED = ("LUNG1-001", "LUNG1-008")  # 001: no heart and no esophagus contour (partial annotation)
UNLABELLED = "LUNG1-005"  # imported from its image alone: an unannotated case in the same dataset


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory) -> dict[str, str]:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results in a temporary folder, for nnU-Net's subprocesses."""
    root = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
        env[name] = str(root / name)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_nnunet_check(dataset_id: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``nnUNetv2_extract_fingerprint -d ID -np 1 --verify_dataset_integrity``.

    The entry point is called as its console script calls it; any rejection by the integrity check is an
    AssertionError / RuntimeError in nnU-Net, so a non-zero exit."""
    code = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
            "extract_fingerprint_entry; sys.exit(extract_fingerprint_entry())")
    return subprocess.run([sys.executable, "-c", code, "-d", str(dataset_id), "-np", "1",
                           "--verify_dataset_integrity"], env=env, capture_output=True, text=True, timeout=600)


def nnunet_fingerprint(dataset_id: int, env: dict[str, str]) -> dict:
    """nnU-Net's integrity check must pass; then its fingerprint of the dataset (what it read of each case)."""
    r = run_nnunet_check(dataset_id, env)
    assert r.returncode == 0, f"nnU-Net rejected the dataset:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "verify_dataset_integrity Done" in r.stdout
    (fp,) = Path(env["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id:03d}_*/dataset_fingerprint.json")
    return json.loads(fp.read_text())


def expected_stats(ds: Dataset, cases: list[str]) -> tuple[list[list[float]], float]:
    """What nnU-Net should find: per-case spacing (z, y, x), and the mean HU of the labelled voxels (label > 0)
    averaged over the cases with equal weight (nnU-Net draws the same number of foreground samples from each)."""
    spacings, means = [], []
    for cid in cases:
        img = ds.load_image(cid)
        lab = ds.load_label(cid, img)
        spacings.append([float(s) for s in img.spacing[::-1]])
        means.append(float(img.array[lab.array > 0].astype(np.float64).mean()))
    return spacings, float(np.mean(means))


@pytest.fixture(scope="module")
def imported(nnunet_env, tmp_path_factory) -> Path:
    """`styleseg import` of two annotated NSCLC cases and one image without labels, into nnUNet_raw."""
    if not DATA.exists():
        pytest.skip(f"real test data {DATA} is absent (../shared/data is not in a fresh clone)")
    lone = tmp_path_factory.mktemp("unlabelled")
    (lone / f"{UNLABELLED}_ct.nii.gz").symlink_to(DATA / f"{UNLABELLED}_ct.nii.gz")  # no label file beside it
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset501_NSCLC"
    args = ["import", str(lone / f"{UNLABELLED}_ct.nii.gz"), "--out", str(out),
            "--cases-json", str(DATA / "cases.json")]
    for cid in LABELLED:
        args += ["--pair", f"{DATA / (cid + '_ct.nii.gz')},{DATA / (cid + '_labels.nii.gz')}"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.realdata
def test_nnunet_accepts_an_imported_dataset_and_trains_on_its_labelled_cases(imported, nnunet_env):
    ds = Dataset(imported)
    js = json.loads((imported / "dataset.json").read_text())
    # the unlabelled case lives in imagesTr with the others; nnU-Net is told which cases are its training cases
    assert sorted(c.case_id for c in ds) == sorted([*LABELLED, UNLABELLED])
    assert ds.case(UNLABELLED).labels is None
    assert js["numTraining"] == 2 and sorted(js["dataset"]) == sorted(LABELLED)
    assert ds.annotated("LUNG1-001") == ("lung_left", "lung_right", "spinal_cord", "body")
    fp = nnunet_fingerprint(501, nnunet_env)
    spacings, mean_fg = expected_stats(ds, list(js["dataset"]))
    assert np.allclose(fp["spacings"], spacings)  # nnU-Net read exactly the two labelled cases, in that order
    assert np.allclose(spacings[0], [6.0, 0.9765625, 0.9765625])
    fg = fp["foreground_intensity_properties_per_channel"]["0"]
    # nnU-Net samples foreground voxels (seeded, 5 million per case here) rather than reading all of them:
    # its mean is within a fraction of a HU of the exact one (the foreground's HU std is a few hundred)
    assert abs(fg["mean"] - mean_fg) < 2.0, (fg["mean"], mean_fg)
    assert fg["min"] >= -1024 and fg["max"] <= 3071


@pytest.fixture(scope="module")
def augmented(imported, nnunet_env, tmp_path_factory) -> Path:
    """One imported case through one tiny generator (a few steps): `styleseg augment`'s m x (n+1) dataset."""
    from styleseg.style.augment import augment
    from styleseg.style.train import GeneratorConfig, fit_generators

    work = tmp_path_factory.mktemp("aug")
    src = subset_dataset(imported, ["LUNG1-008"], work / "source", name="one case")
    ds = Dataset(src)
    img = ds.load_image("LUNG1-008")
    lab = ds.load_label("LUNG1-008", img)
    k = img.shape[0] // 2
    rng = np.random.default_rng(0)
    style_hu = img.array[k].astype(np.float32) + rng.normal(0, 40, img.array[k].shape).astype(np.float32)
    cfg = GeneratorConfig.from_flat(crop=32, steps=2, batch=1, base=4, n_res=1, nps_weight=0.0)
    rec = [{"index": 0, "case_id": "LUNG1-008", "slice": k, "tags": {"kernel": "noisy"}}]
    fit_generators(img.array[k:k + 1], lab.array[k:k + 1], [style_hu], [lab.array[k]], rec, work / "gens", cfg,
                   ds.schema, progress=False)
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset502_NSCLCaug"
    return augment(src, work / "gens", out, device="cpu", progress=False)


@pytest.mark.realdata
def test_nnunet_accepts_an_augmented_dataset(augmented, nnunet_env):
    ds = Dataset(augmented)
    js = json.loads((augmented / "dataset.json").read_text())
    assert sorted(c.case_id for c in ds) == ["LUNG1-008", "LUNG1-008_s00"]
    assert js["numTraining"] == 2 and "dataset" not in js  # every case is a training case: plain folder layout
    gen = ds.load_image("LUNG1-008_s00")
    orig = ds.load_image("LUNG1-008")
    assert not np.array_equal(gen.array, orig.array)  # a generated image, on the original's grid
    fp = nnunet_fingerprint(502, nnunet_env)
    spacings, mean_fg = expected_stats(ds, ["LUNG1-008", "LUNG1-008_s00"])
    assert sorted(map(tuple, fp["spacings"])) == sorted(map(tuple, spacings))
    assert len(fp["shapes_after_crop"]) == 2
    assert abs(fp["foreground_intensity_properties_per_channel"]["0"]["mean"] - mean_fg) < 2.0


def toy_case(z_spacing: float, offset: float) -> tuple[Volume, Volume]:
    """A 3 x 24 x 28 toy thorax (body, two lungs, heart) with HU shifted by ``offset``."""
    yy, xx = np.mgrid[:24, :28]
    lab2 = np.zeros((24, 28), np.uint8)
    lab2[((yy - 12) / 10.0) ** 2 + ((xx - 14) / 12.0) ** 2 <= 1] = 6
    lab2[(((yy - 11) / 6.0) ** 2 + ((xx - 8) / 3.5) ** 2) <= 1] = 1
    lab2[(((yy - 11) / 6.0) ** 2 + ((xx - 20) / 3.5) ** 2) <= 1] = 2
    lab2[(((yy - 14) / 3.0) ** 2 + ((xx - 14) / 2.5) ** 2) <= 1] = 3
    lab = np.repeat(lab2[None], 3, axis=0)
    hu = np.select([lab == 0, lab <= 2, lab == 3], [-1000.0, -850.0, 100.0], 40.0) + offset
    sp = (0.8, 0.8, z_spacing)
    return Volume(hu.astype(np.int16), sp), Volume(lab, sp)


def test_nnunet_reads_only_the_labelsTr_cases_of_a_mixed_dataset(nnunet_env):
    """labelsTr cases, a labelsRef case (evaluation labels) and an unannotated case in one folder: nnU-Net must
    train on the two labelsTr cases and never read the evaluation labels. Its folder scan alone would take all
    four images in imagesTr as training cases (so the ``dataset`` key, and nothing else, makes this work)."""
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset503_Mixed"
    cases = {"tr0": (2.0, "labelsTr"), "tr1": (2.5, "labelsTr"), "ref0": (4.0, "labelsRef"), "none0": (5.0, None)}
    with DatasetWriter(out, "mixed", LabelSchema.default()) as w:
        for i, (cid, (dz, role)) in enumerate(cases.items()):
            img, lab = toy_case(dz, offset=10.0 * i)
            w.add_case(cid, img, lab if role else None, label_role=role or "labelsTr")
    path = out / "dataset.json"
    js = json.loads(path.read_text())
    assert js["numTraining"] == 2
    assert js["dataset"] == {c: {"images": [f"imagesTr/{c}_0000.nii.gz"], "label": f"labelsTr/{c}.nii.gz"}
                             for c in ("tr0", "tr1")}
    assert (out / "labelsRef" / "ref0.nii.gz").exists() and not (out / "labelsTr" / "ref0.nii.gz").exists()

    without = {k: v for k, v in js.items() if k != "dataset"}
    path.write_text(json.dumps(without))
    r = run_nnunet_check(503, nnunet_env)
    assert r.returncode != 0
    assert "Did not find the expected number of training cases (2). Found 4" in r.stdout + r.stderr

    path.write_text(json.dumps(js))
    fp = nnunet_fingerprint(503, nnunet_env)
    assert np.allclose(fp["spacings"], [[2.0, 0.8, 0.8], [2.5, 0.8, 0.8]])
    # foreground of tr0 and tr1 (offsets 0 and 10 HU), equal weight: never the labelsRef case's +20 HU
    ds = Dataset(out)
    _, mean_fg = expected_stats(ds, ["tr0", "tr1"])
    assert abs(fp["foreground_intensity_properties_per_channel"]["0"]["mean"] - mean_fg) < 2.0
