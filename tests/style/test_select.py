"""Automatic style selection: descriptors, k-medoids, recovery of texture groups, real kernel pair."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from styleseg.errors import InputError
from styleseg.io.dataset import DatasetWriter
from styleseg.io.volume import Volume, read_nifti
from styleseg.labels import LabelSchema
from styleseg.style.select import (
    SelectConfig,
    candidate_slices,
    pick_styles,
    tally,
)
from styleseg.style.styleset import StyleSet

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
TEXTURES = ("white", "smooth", "sharp")
SIZE = 176  # large enough for 32 px soft-tissue NPS ROIs (styleseg.texture)


def _noise(kind: str, rng: np.random.Generator, shape: tuple[int, ...], sd: float = 25.0) -> np.ndarray:
    w = rng.normal(0, 1, shape)
    if kind == "smooth":
        w = ndi.gaussian_filter(w, (0, 1.5, 1.5))
    elif kind == "sharp":
        w = w - ndi.gaussian_filter(w, (0, 1.0, 1.0))
    return w / w.std() * sd  # the same noise std for all three: only the texture differs


def _phantom(kind: str, seed: int, nz: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A thorax-like phantom (body disk, two lungs, a 'heart') with one noise texture; HU + labels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE] - SIZE / 2 + 0.5
    q = SIZE / 112  # geometry designed at 112 px
    x, y = x / q, y / q
    r = 44 + 2 * rng.random()
    body = (x / r) ** 2 + (y / (0.8 * r)) ** 2 < 1
    lung_l = ((x - 17) / 11) ** 2 + (y / 19) ** 2 < 1
    lung_r = ((x + 17) / 11) ** 2 + (y / 19) ** 2 < 1
    heart = ((x - 2) / 8) ** 2 + ((y - 18) / 6) ** 2 < 1
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[body] = 40
    hu[lung_l | lung_r] = -820
    hu[heart] = 90
    lab = np.zeros((SIZE, SIZE), np.uint8)
    lab[body] = 6
    lab[lung_l] = 1
    lab[lung_r] = 2
    lab[heart] = 3
    vol = hu[None].repeat(nz, 0) + _noise(kind, rng, (nz, SIZE, SIZE))
    return np.rint(vol).astype(np.int16), lab[None].repeat(nz, 0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six cases: two per texture; the 'white' cases carry labelsRef, the others are unlabelled."""
    out = tmp_path_factory.mktemp("t") / "target"
    with DatasetWriter(out, "synthtarget", LabelSchema.default()) as w:
        for g, kind in enumerate(TEXTURES):
            for j in range(2):
                hu, lab = _phantom(kind, 10 * g + j)
                img = Volume(hu, (0.8, 0.8, 3.0))
                w.add_case(f"{kind}{j}", img, img.with_array(lab) if kind == "white" else None,
                           label_role="labelsRef", protocol=f"proto-{kind}",
                           scanner={"ConvolutionKernel": f"K-{kind}", "Manufacturer": "Sim"})
    return out


FAST = SelectConfig(candidates_per_case=3, vgg_crop=96, restarts=4)








def test_candidate_slices_prefers_body_and_lungs() -> None:
    hu, lab = _phantom("white", 0, nz=7)
    hu[0] = -1000  # no body
    hu[1][(lab[1] == 1) | (lab[1] == 2)] = 40  # body without lungs
    got = candidate_slices(hu, None)
    assert got == [2, 3, 4, 5, 6]
    assert candidate_slices(hu, 3) == [2, 4, 6]


def test_auto_selection_recovers_texture_groups(synth: Path, tmp_path: Path) -> None:
    t = time.perf_counter()
    s = pick_styles(synth, 3, tmp_path / "S", config=FAST)
    dt = time.perf_counter() - t
    # one medoid per texture group, and each cluster holds exactly its group's 6 candidates
    kinds = sorted(st.case_id.rstrip("01") for st in s.styles)
    assert kinds == sorted(TEXTURES)
    clusters = s.extras["clusters"]
    for c in clusters:
        assert c["size"] == 6 and len({m[0].rstrip("01") for m in c["members"]}) == 1
        assert len(c["tags"]["protocol"]) == 1 and list(c["tags"]["protocol"].values()) == [6]
    assert all(st.cluster_size == 6 for st in s.styles)
    assert s.method == "kmedoids on NPS+Gram descriptors"
    st = next(st for st in s.styles if st.case_id.startswith("sharp"))
    assert st.tags == {"protocol": "proto-sharp", "ConvolutionKernel": "K-sharp", "Manufacturer": "Sim"}
    assert "6 slices from 2 case(s)" in st.why and "ConvolutionKernel: K-sharp x6" in st.why
    # labels: dataset labels for the white texture, none for the unlabelled ones
    for st in s.styles:
        if st.case_id.startswith("white"):
            assert st.label_source == "dataset:labelsRef" and set(np.unique(st.label.array)) == {0, 1, 2, 3, 6}
        else:
            assert st.label is None and st.label_source is None
    # the folder round-trips, with its contact sheet and the source slice's geometry
    again = StyleSet.load(tmp_path / "S")
    assert [x.case_id for x in again.styles] == [x.case_id for x in s.styles]
    png = (tmp_path / "S" / "contact_sheet.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    src = read_nifti(synth / "imagesTr" / f"{st.case_id}_0000.nii.gz")
    np.testing.assert_array_equal(again.styles[st.index].image.array[0], src.array[st.slice])
    assert again.styles[st.index].image.origin[2] == pytest.approx(3.0 * st.slice)
    assert dt < 60


def test_nps_only_also_recovers_groups(synth: Path, tmp_path: Path) -> None:
    s = pick_styles(synth, 3, tmp_path / "S", config=replace(FAST, use_vgg=False), seed=3)
    assert sorted(st.case_id.rstrip("01") for st in s.styles) == sorted(TEXTURES)
    assert s.method == "kmedoids on NPS descriptors" and s.extras["feature_dims"]["vgg"] == 0


def test_manual_mode(synth: Path, tmp_path: Path) -> None:
    s = pick_styles(synth, 6, tmp_path / "S", manual=[("smooth1", 2), ("white0", 1)])
    assert s.method == "manual" and [(x.case_id, x.slice) for x in s.styles] == [("smooth1", 2), ("white0", 1)]
    assert s.styles[0].label is None and s.styles[1].label_source == "dataset:labelsRef"
    assert s.styles[0].why == "chosen by hand (--slices)" and (tmp_path / "S" / "contact_sheet.png").exists()
    with pytest.raises(InputError, match=r"dataset\.json: manual style nope:0: case 'nope' is not in the target"):
        pick_styles(synth, 1, tmp_path / "S2", manual=[("nope", 0)])
    with pytest.raises(InputError, match=r"white0_0000\.nii\.gz: manual style white0:9: slice 9 is out of range"):
        pick_styles(synth, 1, tmp_path / "S2", manual=[("white0", 9)])
    assert not (tmp_path / "S2").exists()


def test_errors(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"asked for 19 styles but the target has only 18 candidate slices"):
        pick_styles(synth, 19, tmp_path / "S", config=replace(FAST, use_vgg=False))
    with pytest.raises(InputError, match=r"without a label map: smooth1 slice 2 .*--labels-from"):
        pick_styles(synth, 1, tmp_path / "S", manual=[("smooth1", 2)], require_labels=True)
    with pytest.raises(InputError, match="unknown case"):
        pick_styles(synth, 1, tmp_path / "S", exclude_cases=["nope"])
    assert not (tmp_path / "S").exists()
    # a target without images
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "dataset.json").write_text(json.dumps({"labels": {"background": 0}, "file_ending": ".nii.gz"}))
    with pytest.raises(InputError, match=r"imagesTr: the target dataset has no images"):
        pick_styles(empty, 2, tmp_path / "S")
    with pytest.raises(InputError, match="dataset folder does not exist"):
        pick_styles(tmp_path / "nothing", 2, tmp_path / "S")


def test_exclude_cases(synth: Path, tmp_path: Path) -> None:
    s = pick_styles(synth, 2, tmp_path / "S", exclude_cases=["sharp0", "sharp1"], config=replace(FAST, use_vgg=False))
    members = {m[0] for c in s.extras["clusters"] for m in c["members"]}
    assert members == {"white0", "white1", "smooth0", "smooth1"}


def test_tally() -> None:
    t = tally([{"protocol": "a"}, {"protocol": "b", "kernel": "L"}, {"protocol": "a"}])
    assert t == {"kernel": {"?": 2, "L": 1}, "protocol": {"a": 2, "b": 1}}


@pytest.mark.realdata
def test_real_kernel_pair_separates_kernels(tmp_path: Path) -> None:
    """Lung-PET-CT-Dx A0001 reconstructed with sharp (L) and standard (B) kernels: n=2 splits by kernel."""
    kp = DATA / "kernel-pairs"
    if not (kp / "A0001_kernel-L_ct.nii.gz").exists():
        pytest.skip(f"real data not found at {kp} (../shared/data is absent in a fresh clone)")
    target = tmp_path / "kp"
    with DatasetWriter(target, "kernelpair", LabelSchema.default()) as w:
        for k in ("L", "B"):
            vol = read_nifti(kp / f"A0001_kernel-{k}_ct.nii.gz")
            mid = vol.shape[0] // 2
            sub = Volume(vol.array[mid - 6:mid + 6:3].copy(), vol.spacing, vol.origin, vol.direction)
            w.add_case(f"A0001_{k}", sub, protocol="120kVp-150mAs",
                       scanner={"ConvolutionKernel": k, "ManufacturerModelName": "Brilliance16"})
    s = pick_styles(target, 2, tmp_path / "S", config=SelectConfig(candidates_per_case=4, restarts=2))
    assert sorted(st.case_id for st in s.styles) == ["A0001_B", "A0001_L"]
    for c in s.extras["clusters"]:
        assert c["size"] == 4 and list(c["tags"]["ConvolutionKernel"].values()) == [4]
    assert (tmp_path / "S" / "contact_sheet.png").exists()


def test_cli_pick_styles(synth: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from styleseg.cli import app

    r = CliRunner().invoke(app, ["pick-styles", str(synth), "-n", "3", "--out", str(tmp_path / "S"), "--no-vgg",
                                 "--candidates-per-case", "2", "--exclude-cases", "white1,smooth1"])
    assert r.exit_code == 0, r.output
    s = StyleSet.load(tmp_path / "S")
    assert {st.case_id.rstrip("01") for st in s.styles} == set(TEXTURES)
    assert not {st.case_id for st in s.styles} & {"white1", "smooth1"}
    assert "no label map" in r.output and "contact_sheet.png" in r.output
    r = CliRunner().invoke(app, ["pick-styles", str(synth), "--out", str(tmp_path / "M"),
                                 "--slices", "white0:1,sharp1:0"])
    assert r.exit_code == 0, r.output
    assert [(st.case_id, st.slice) for st in StyleSet.load(tmp_path / "M").styles] == [("white0", 1), ("sharp1", 0)]
    r = CliRunner().invoke(app, ["pick-styles", str(synth), "--out", str(tmp_path / "X"), "--slices", "white0"])
    assert r.exit_code == 2 and "not CASE:INDEX" in r.output
    r = CliRunner().invoke(app, ["pick-styles", str(synth), "-n", "99", "--out", str(tmp_path / "X"), "--no-vgg"])
    assert r.exit_code == 2 and "asked for 99 styles" in r.output
    r = CliRunner().invoke(app, ["pick-styles", str(synth), "--out", str(tmp_path / "X"), "--dry-run"])
    assert r.exit_code == 0 and '"vgg_layers"' in r.output and not (tmp_path / "X").exists()


class _ThresholdPredictor:
    """Test double for styleseg.seg.predict.Predictor: lungs where HU < -500 inside a 'body' > -400."""

    calls: list[tuple[int, ...]] = []

    def __init__(self, model_folder: Path, value: int = 1):
        self.model_folder = Path(model_folder)
        self.value = 9 if self.model_folder.name == "bad" else value

    def check_geometry(self, spacing, direction, path=None) -> tuple[bool, bool]:
        return False, False

    def predict_array(self, hu: np.ndarray, spacing=None) -> np.ndarray:
        _ThresholdPredictor.calls.append(tuple(hu.shape))
        body = np.stack([ndi.binary_fill_holes(h > -400) for h in hu])
        return np.where(body & (hu < -500), self.value, np.where(body, 6, 0)).astype(np.uint8)


def _fake_predictor_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cls: type) -> Path:
    """Put ``cls`` in place of the seg module's Predictor; returns an (empty) model folder."""
    import sys
    import types

    fake = types.ModuleType("styleseg.seg.predict")
    fake.Predictor = cls  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "styleseg.seg.predict", fake)
    model = tmp_path / "model"
    model.mkdir()
    _ThresholdPredictor.calls.clear()
    return model


def test_labels_from_model(synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from styleseg.cli import app

    model = _fake_predictor_module(monkeypatch, tmp_path, _ThresholdPredictor)
    r = CliRunner().invoke(app, ["pick-styles", str(synth), "--out", str(tmp_path / "S"), "--labels-from", str(model),
                                 "--slices", "white0:1,smooth1:2,sharp0:0", "--require-labels"])
    assert r.exit_code == 0, r.output
    assert "Check and correct" in r.output and "style_01_label.nii.gz, style_02_label.nii.gz" in r.output
    assert _ThresholdPredictor.calls == [(2, SIZE, SIZE)]  # one batch for the two unlabelled slices
    s = StyleSet.load(tmp_path / "S")
    assert [x.label_source for x in s.styles] == ["dataset:labelsRef", f"model:{model.resolve()}",
                                                  f"model:{model.resolve()}"]
    _, lab = _phantom("smooth", 11)
    got = s.styles[1].label_map
    # the threshold model finds the phantom's lungs (value 1) and body (6); both lungs are 'lung 1' here
    assert set(np.unique(got)) == {0, 1, 6}
    lungs = (lab[2] == 1) | (lab[2] == 2)
    assert ((got == 1) == lungs).mean() > 0.97
    # a model that returns values outside the schema is refused, and nothing is written
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(InputError, match=r"label values \[9\] are not in the label schema"):
        pick_styles(synth, 1, tmp_path / "S3", manual=[("sharp0", 0)], labels_from=bad)
    assert not (tmp_path / "S3").exists()
    with pytest.raises(InputError, match="segmentation model folder does not exist"):
        pick_styles(synth, 1, tmp_path / "S3", manual=[("sharp0", 0)], labels_from=tmp_path / "nope")


class _ContextPredictor(_ThresholdPredictor):
    context = 1  # a 2.5D model: a stack of unrelated style slices must not be read as neighbours


def test_labels_from_a_2p5d_model_predict_each_style_slice_alone(synth: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_predictor_module(monkeypatch, tmp_path, _ContextPredictor)
    pick_styles(synth, 2, tmp_path / "S", manual=[("smooth1", 2), ("sharp0", 0)], labels_from=model)
    assert _ThresholdPredictor.calls == [(1, SIZE, SIZE), (1, SIZE, SIZE)]


@pytest.mark.parametrize("cover", [True, False])
def test_selection_prefers_style_slices_that_hold_every_structure(tmp_path: Path, cover: bool) -> None:
    """Two textures, two labelled cases each; only the last of a case's four slices holds the heart (the others are
    labelled body there, same image). Texture clustering alone takes the medoid, which in most clusters has no
    heart; with ``cover_structures`` each cluster's style slice is a member of that cluster holding the heart, its
    label map attached and the reason in ``why``."""
    target = tmp_path / "target"
    with DatasetWriter(target, "covertarget", LabelSchema.default()) as w:
        for g, kind in enumerate(("white", "sharp")):
            for j in range(2):
                hu, lab = _phantom(kind, 10 * g + j)
                lab[:3][lab[:3] == 3] = 6
                img = Volume(hu, (0.8, 0.8, 3.0))
                w.add_case(f"{kind}{j}", img, img.with_array(lab), label_role="labelsRef", protocol=f"proto-{kind}")
    cfg = replace(FAST, candidates_per_case=None, cover_structures=cover)
    ss = pick_styles(target, 2, tmp_path / "styles", config=cfg)
    assert sorted(s.case_id[:5] for s in ss.styles) == ["sharp", "white"]  # one style per texture
    held = [bool((s.label_map == 3).sum() >= 20) for s in ss.styles]
    if cover:
        assert all(held) and all(s.slice == 3 for s in ss.styles)
        assert all("holds no heart" in s.why for s in ss.styles if "the medoid" in s.why)
        saved = StyleSet.load(tmp_path / "styles")
        assert [s.slice for s in saved.styles] == [3, 3] and all(s.label_source == "dataset:labelsRef"
                                                                  for s in saved.styles)
    else:
        assert not all(held)  # the medoids: the case this option exists for
