"""Generator architecture, training (separate, conditional, exact resume), augmentation, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from styleseg.errors import InputError
from styleseg.io.dataset import Dataset
from styleseg.style import train as train_mod
from styleseg.style.augment import augment
from styleseg.style.data import Source
from styleseg.style.generator import GeneratorSpec, StyleGenerator, load_generator
from styleseg.style.train import GeneratorConfig, train_generators

TINY = GeneratorConfig.from_flat(crop=32, steps=3, batch=1, base=4, n_res=1, log_every=1, checkpoint_every=2)


def test_generator_shapes_range_and_prior():
    g = StyleGenerator(GeneratorSpec(num_classes=7, base=4, n_res=1, output="tanh"))
    lab = torch.randint(0, 7, (2, 30, 37))  # not multiples of 4: padded and cropped back
    hu = g(lab)
    assert hu.shape == (2, 1, 30, 37)
    assert hu.min() >= -1024 and hu.max() <= 1500
    # output conv starts at zero: the output is exactly the per-segment intensity prior
    means = torch.tensor([[-1000.0, -850, -850, 60, 30, 30, 40]])
    g.init_prior(means, torch.ones(1, 7, dtype=torch.bool))
    hu = g(lab)[:, 0]
    assert torch.allclose(hu, means[0][lab], atol=0.5)
    cg = StyleGenerator(GeneratorSpec(num_classes=7, base=4, n_res=1, n_styles=3, conditional=True))
    with pytest.raises(ValueError, match="style index"):
        cg(lab)
    with pytest.raises(ValueError, match="out of range"):
        cg(lab, torch.tensor([0, 3]))


def test_residual_generator_exact_segment_means_and_noise_colouring():
    torch.manual_seed(0)
    g = StyleGenerator(GeneratorSpec(num_classes=7, base=4, n_res=1, noise_kernel=3))
    lab = torch.zeros(1, 64, 64, dtype=torch.long)
    lab[:, :, 32:] = 6
    lab[:, 20:40, 40:50] = 3
    means = torch.tensor([[-500.0, -850, -850, 60, 30, 30, 40]])  # exact unless clamped at -1024
    g.init_prior(means, torch.ones(1, 7, dtype=torch.bool))
    with torch.no_grad():  # a non-zero content branch too: the means must still be exact
        g.out.weight.normal_(0, 0.05)
        g.out.bias.fill_(0.3)
        hu = g(lab)[0, 0]
    for v in (0, 3, 6):
        assert abs(float(hu[lab[0] == v].mean()) - float(means[0, v])) < 1e-3
    assert hu[lab[0] == 6].std() > 5  # there is texture
    # noise branch alone: amplitude 10 HU, 3x3 box filter / 3 (unit energy) -> std 10, neighbours correlated
    box = torch.full((1, 3, 3), 1.0 / 3.0)
    g.init_texture(box, torch.full((1, 7), 10.0))
    with torch.no_grad():
        g.out.weight.zero_()
        g.out.bias.zero_()
        big = torch.full((1, 256, 256), 6)
        hu = g(big, noise=torch.randn(1, 1, 256, 256))[0, 0] - 40.0
    assert abs(float(hu.std()) - 10.0) < 0.4
    c = float((hu[:, 1:] * hu[:, :-1]).mean() / hu.var())  # box 3x3: lag-1 correlation 6/9
    assert abs(c - 2 / 3) < 0.05
    with pytest.raises(ValueError, match="odd"):
        GeneratorSpec(num_classes=7, noise_kernel=4)


def test_texture_init_recovers_white_and_correlated_noise():
    from scipy import ndimage as ndi

    from styleseg.style.train import texture_init

    rng = np.random.default_rng(1)
    lab = np.full((160, 160), 6, np.uint8)
    lab[:, :20] = 0
    hu_w = 40.0 + 30.0 * rng.normal(size=lab.shape)
    hu_w[lab == 0] = -1000 + 60.0 * rng.normal(size=(lab == 0).sum())
    f, a = texture_init(hu_w, lab, 7, 11, "nps")
    assert abs(a[6] - 30.0) < 4.0 and abs(a[0] - 60.0) < 10.0  # amplitudes per segment
    assert f[5, 5] > 0.9 and abs(float((f**2).sum()) - 1.0) < 1e-5  # white noise: a near-delta filter
    n = ndi.gaussian_filter(rng.normal(size=lab.shape), 1.5)
    f2, a2 = texture_init(40.0 + 30.0 * n / n.std(), lab, 7, 11, "nps")
    # correlated noise: a spread filter (white: neighbour/centre ~ 0; the exact sqrt-PSD filter of this noise is
    # the Gaussian itself, ratio 0.80; slice_nps assumes a CT ramp near DC, which lowers it here)
    assert abs(f[5, 6] / f[5, 5]) < 0.1 and f2[5, 6] / f2[5, 5] > 0.45
    fw, _ = texture_init(hu_w, lab, 7, 11, "white")
    assert fw[5, 5] == 1.0 and fw.sum() == 1.0


def test_train_separate_writes_model_folders_logs_and_resumes_exactly(tiny_source, tiny_styles, tmp_path,
                                                                      monkeypatch):
    # one thread: with two on a loaded machine the float sums of a step differ in their last bits between runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_separate_and_resume(tiny_source, tiny_styles, tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _train_separate_and_resume(tiny_source, tiny_styles, tmp_path, monkeypatch):
    cfg = TINY
    folders = train_generators(tiny_source, tiny_styles, tmp_path / "a", cfg, progress=False)
    assert [f.name for f in folders] == ["style_00", "style_01"]
    meta = json.loads((folders[0] / "model.json").read_text())
    assert meta["kind"] == "generator" and meta["styles"][0]["index"] == 0
    assert meta["schema"]["body"] == 6 and meta["output"]["unit"] == "HU"
    rows = [json.loads(x) for x in (folders[0] / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r[k]) for r in rows for k in ("content", "style", "mean_hu"))
    assert (folders[0] / "loss_curve.png").stat().st_size > 1000
    assert (folders[0] / "checkpoint.pt").exists()

    # interrupted after the step-2 checkpoint, then resumed: identical weights to the uninterrupted run
    real = train_mod.sample_batch

    def dying(src, crop, batch, seed, step):
        if step == 2:
            raise KeyboardInterrupt
        return real(src, crop, batch, seed, step)

    monkeypatch.setattr(train_mod, "sample_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        train_generators(tiny_source, tiny_styles, tmp_path / "b", cfg, progress=False)
    monkeypatch.setattr(train_mod, "sample_batch", real)
    assert not (tmp_path / "b" / "style_00" / "model.json").exists()
    resumed = train_generators(tiny_source, tiny_styles, tmp_path / "b", cfg, resume=True, progress=False)
    for fa, fb in zip(folders, resumed, strict=True):
        wa = torch.load(fa / "weights.pt", weights_only=True)
        wb = torch.load(fb / "weights.pt", weights_only=True)
        assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    rows_b = [json.loads(x)["step"] for x in (resumed[0] / "train_log.jsonl").read_text().splitlines()]
    assert rows_b == [1, 2, 3]


def test_conditional_generator_and_augment(tiny_source, tiny_styles, tmp_path):
    folders = train_generators(tiny_source, tiny_styles, tmp_path / "c", TINY.replace(conditional=True,
                                                                                   conditional_steps=2), progress=False)
    assert [f.name for f in folders] == ["conditional"]
    model, meta = load_generator(folders[0])
    assert model.spec.n_styles == 2 and [s["index"] for s in meta["styles"]] == [0, 1]
    # the two styles differ for the same label map and noise (per-style norms and intensity prior)
    from styleseg.style.generator import add_bone_segment

    src = Dataset(tiny_source)
    hu = np.asarray(src.load_image("S000").array[:1], np.float32)
    lab = add_bone_segment(src.load_label("S000").array[:1], hu, 6, 300.0, 7, 150.0)
    lab, hu = torch.from_numpy(lab.astype(np.int64)), torch.from_numpy(hu)[:, None]
    noise = torch.randn(1, 1, *lab.shape[1:])
    with torch.no_grad():
        a, b = model(lab, torch.tensor([0]), noise, hu), model(lab, torch.tensor([1]), noise, hu)
    assert (a - b).abs().mean() > 1.0

    aug = augment(tiny_source, tmp_path / "c", tmp_path / "aug", seed=0, progress=False)
    ds, src = Dataset(aug), Dataset(tiny_source)
    assert len(ds) == len(src) * (2 + 1)
    for rec in ds.cases:
        prov = rec.extras["provenance"]
        s = prov["source_case"]
        assert rec.annotated == src.case(s).annotated  # partial labels stay partial
        lab, slab = ds.load_label(rec.case_id), src.load_label(s)
        assert np.array_equal(lab.array, slab.array)
        img = ds.load_image(rec.case_id)
        assert img.same_grid(src.load_image(s))
        if prov["style"] is not None:
            assert prov["generator"].endswith("conditional") and rec.case_id.endswith("c")
    assert "heart" not in ds.case("S001_s01c").annotated and "heart" in ds.case("S000_s00c").annotated
    assert (aug / "dataset.json").exists() and (aug / "imagesTr" / "S000_s00c_0000.nii.gz").exists()


def test_bad_style_inputs(tiny_source, tiny_styles, tmp_path):
    bad = tmp_path / "nolabel"
    shutil.copytree(tiny_styles, bad)
    js = json.loads((bad / "styles.json").read_text())
    js["styles"][1]["label"] = None
    (bad / "styles.json").write_text(json.dumps(js))
    with pytest.raises(InputError, match=r"without a label map.*style 1"):
        train_generators(tiny_source, bad, tmp_path / "g", TINY, progress=False)

    from styleseg.io.volume import read_nifti, write_nifti

    bad2 = tmp_path / "badvalues"
    shutil.copytree(tiny_styles, bad2)
    lp = bad2 / "style_00_label.nii.gz"
    v = read_nifti(lp)
    v.array = v.array.copy()
    v.array[0, 0, 0] = 9
    write_nifti(v, lp)
    with pytest.raises(InputError, match=r"style_00_label\.nii\.gz.*\[9\]"):
        train_generators(tiny_source, bad2, tmp_path / "g", TINY, progress=False)
    assert not (tmp_path / "g").exists()
    with pytest.raises(InputError, match="holds no generator folders"):
        augment(tiny_source, tmp_path, tmp_path / "aug2", progress=False)


def test_paper_preset_trains_on_native_spacing_crops_of_whole_slices():
    """The paper preset keeps the paper's pixels (no resampling) and saves time with crops: each training
    sample is an exact sub-array of a 512 x 512 source slice, and a step holds as many pixels as 4 whole slices."""
    cfg = GeneratorConfig.preset("paper").optim
    assert cfg.epochs == 100 and cfg.crop < 512 and cfg.batch * cfg.crop ** 2 == 4 * 512 ** 2
    rng = np.random.default_rng(0)
    images = rng.integers(-1000, 1000, (3, 512, 512)).astype(np.int16)
    labels = np.zeros((3, 512, 512), np.uint8)
    labels[:, 100:400, 120:380] = 6
    imgs, labs = train_mod.sample_batch(Source(images, labels), cfg.crop, cfg.batch, 0, 7)
    assert imgs.shape == labs.shape == (cfg.batch, cfg.crop, cfg.crop)
    for img, lab in zip(imgs, labs, strict=True):
        hits = [(i, y, x) for i in range(3) for y in range(512 - cfg.crop + 1)
                for x in ((images[i, y, :512 - cfg.crop + 1] == img[0, 0]).nonzero()[0])
                if np.array_equal(images[i, y:y + cfg.crop, x:x + cfg.crop], img)]
        assert len(hits) == 1
        i, y, x = hits[0]
        assert np.array_equal(labels[i, y:y + cfg.crop, x:x + cfg.crop], lab)


def test_resuming_under_another_config_is_refused_not_silently_restarted(tiny_source, tiny_styles, tmp_path):
    """One checkpoint policy for every training loop (trainer.TrainingRun): a checkpoint written under another
    config is a CheckpointMismatch, which the caller (the pipeline, or the user) resolves by starting over."""
    from styleseg.errors import CheckpointMismatch

    cfg = TINY.replace(steps=3, checkpoint_every=1)
    real = train_mod.sample_batch

    def dying(src, crop, batch, seed, step):
        if step == 2:
            raise KeyboardInterrupt
        return real(src, crop, batch, seed, step)

    train_mod.sample_batch = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            train_generators(tiny_source, tiny_styles, tmp_path / "g", cfg, progress=False)
    finally:
        train_mod.sample_batch = real
    with pytest.raises(CheckpointMismatch, match="another config"):
        train_generators(tiny_source, tiny_styles, tmp_path / "g", cfg.replace(lr=5e-4), resume=True, progress=False)
    assert train_generators(tiny_source, tiny_styles, tmp_path / "g", cfg, resume=True, progress=False)


def test_training_warns_of_structures_a_style_slice_lacks(tmp_path, caplog):
    """A structure of the source that a style slice's label map does not hold gets no style texture: training says
    which, per style slice (absent_structures by hand: the heart, value 3, is in the source and style 0 only)."""
    import logging

    from styleseg.labels import LabelSchema
    from styleseg.style.targets import absent_structures
    from styleseg.style.train import GeneratorConfig, fit_generators

    lab = np.zeros((64, 64), np.uint8)
    lab[4:60, 4:60] = 6
    lab[20:40, 20:40] = 3
    no_heart = np.where(lab == 3, 6, lab).astype(np.uint8)
    schema = LabelSchema.default()
    assert absent_structures(lab[None], [lab, no_heart], schema) == [[], ["heart"]]
    assert absent_structures(no_heart[None], [no_heart], schema) == [[]]  # not in the source: nothing to warn of
    hu = np.where(lab == 3, 50.0, np.where(lab > 0, 20.0, -1000.0)).astype(np.float32)
    recs = [{"index": k, "case_id": f"t{k + 1}", "slice": 7 + 2 * k, "tags": {}} for k in (0, 1)]
    cfg = GeneratorConfig.from_flat(crop=32, steps=1, batch=1, base=4, n_res=1, log_every=1)
    with caplog.at_level(logging.WARNING, logger="styleseg.style.train"):
        fit_generators(hu[None].astype(np.int16), lab[None], [hu, np.where(lab == 3, 20.0, hu)], [lab, no_heart],
                       recs, tmp_path / "g", cfg, schema, progress=False)
    warned = [r.getMessage() for r in caplog.records if "holds no" in r.getMessage()]
    assert warned == [warned[0]] and "style 1 (t2 slice 9) holds no heart" in warned[0]


def test_fill_absent_borrows_a_similar_segment_and_the_source_mean():
    """By hand: segments 0 bg, 1 lung (-800 HU in the source), 2 heart (60), 3 body (0), 4 bone (700). The style
    slice holds lung, body and bone, no heart. The heart borrows the body's Gram (the largest segment within 200 HU
    of its source mean; lung and bone are not) and gets the source's heart mean; a segment the source lacks too
    stays absent."""
    from styleseg.style.losses import StyleTargets
    from styleseg.style.targets import fill_absent

    src_lab = np.zeros((2, 8, 8), np.int64)
    src_lab[:, 1:7, 1:7] = 3
    src_lab[:, 2:4, 2:4] = 2
    src_lab[:, 5:7, 5:7] = 1
    src_lab[:, 1, 6] = 4
    src_hu = np.select([src_lab == 1, src_lab == 2, src_lab == 3, src_lab == 4], [-800.0, 60.0, 0.0, 700.0], -1000.0)
    style_lab = np.zeros((8, 8), np.int64)
    style_lab[1:7, 1:7] = 3
    style_lab[5:7, 5:7] = 1
    style_lab[1, 1] = 4
    present = torch.tensor([[True, True, False, True, True, False]])  # 6 segments: 5 never occurs
    grams = {"relu1_1": torch.arange(6, dtype=torch.float32).reshape(1, 6, 1, 1).expand(1, 6, 2, 2).clone()}
    means = torch.tensor([[-1000.0, -790.0, 0.0, 10.0, 650.0, 0.0]])
    t, m, lent = fill_absent(StyleTargets(grams, present), means, [style_lab], src_hu, src_lab)
    assert lent == [(0, 2, 3)]
    assert t.present.tolist() == [[True, True, True, True, True, False]]
    assert torch.equal(t.grams["relu1_1"][0, 2], torch.full((2, 2), 3.0))  # the body's Gram
    assert m[0, 2].item() == pytest.approx(60.0) and m[0, 3].item() == 10.0  # the source's heart, the style's body
    assert torch.equal(grams["relu1_1"][0, 2], torch.full((2, 2), 2.0))  # the inputs are not changed
    # a dense segment absent with nothing within 200 HU borrows from the nearest in source mean (bone -> body)
    t, m, lent = fill_absent(StyleTargets(grams, present & torch.tensor([[1, 1, 0, 1, 0, 1]], dtype=torch.bool)),
                             means, [np.where(style_lab == 4, 3, style_lab)], src_hu, src_lab)
    assert lent == [(0, 2, 3), (0, 4, 3)] and m[0, 4].item() == pytest.approx(700.0)


@pytest.mark.parametrize("fill", [True, False])
def test_a_structure_the_style_slice_lacks_keeps_the_source_intensity(tmp_path, fill):
    """The residual generator sets every segment's mean to its target: a heart that the style slice lacks was drawn
    at 0 HU (the U-Net lost the heart on real CT). With fill_absent it keeps the source's heart mean (here 80 HU,
    a contrast-enhanced heart); without, it is drawn at 0 HU, the behaviour this test would catch coming back. Both
    with the style slice's segment means (source_means = false): with the source's, every segment keeps its own."""
    from styleseg.labels import LabelSchema
    from styleseg.style.augment import generate_volume
    from styleseg.style.generator import load_generator
    from styleseg.style.train import GeneratorConfig, fit_generators

    lab = np.zeros((64, 64), np.uint8)
    lab[4:60, 4:60] = 6
    lab[20:40, 20:40] = 3
    hu = np.where(lab == 3, 80.0, np.where(lab > 0, 20.0, -1000.0)).astype(np.float32)
    no_heart = np.where(lab == 3, 6, lab).astype(np.uint8)
    cfg = GeneratorConfig.from_flat(crop=32, steps=1, batch=1, base=4, n_res=1, image_input=True, source_skip=True,
                                    source_means=False, fill_absent=fill)
    (folder,) = fit_generators(hu[None].astype(np.int16), lab[None], [np.where(lab == 3, 20.0, hu)], [no_heart],
                               [{"index": 0, "case_id": "t", "slice": 0, "tags": {}}], tmp_path / "g", cfg,
                               LabelSchema.default(), progress=False)
    model, _ = load_generator(folder)
    gen = generate_volume(model, lab[None], hu[None], 0, seed=0)[0].astype(np.float32)
    heart = gen[lab == 3].mean()
    assert heart == pytest.approx(80.0 if fill else 0.0, abs=3.0), heart
    assert gen[lab == 6].mean() == pytest.approx(20.0, abs=3.0)


@pytest.mark.parametrize("source_means", [False, True])
def test_source_means_keep_every_segment_at_the_source_level(source_means):
    """With source_skip each segment is moved to the style's mean (here body 100 HU, heart 150 HU); with source_means
    it keeps the source slice's own (body 20, heart 80) and the style gives the texture only."""
    from styleseg.style.generator import GeneratorSpec, StyleGenerator

    spec = GeneratorSpec(num_classes=7, base=4, n_res=1, image_input=True, source_skip=True,
                         source_means=source_means)
    model = StyleGenerator(spec)
    means = torch.zeros(1, 7)
    means[0, 3], means[0, 6] = 150.0, 100.0
    model.init_prior(means, torch.ones(1, 7, dtype=torch.bool))
    lab = np.zeros((48, 48), np.int64)
    lab[4:44, 4:44] = 6
    lab[16:32, 16:32] = 3
    hu = np.where(lab == 3, 80.0, np.where(lab > 0, 20.0, -1000.0)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(lab)[None], torch.zeros(1, dtype=torch.long), torch.randn(1, 1, 48, 48),
                    torch.from_numpy(hu)[None, None])[0, 0].numpy()
    want = {3: 80.0, 6: 20.0} if source_means else {3: 150.0, 6: 100.0}
    for v, level in want.items():
        assert out[lab == v].mean() == pytest.approx(level, abs=1.0)
    with pytest.raises(ValueError, match="source_means needs source_skip"):
        GeneratorSpec(num_classes=7, image_input=True, source_means=True)


def test_source_skip_generators_keep_the_source_means_unless_told_otherwise(tiny_source, tiny_styles, tmp_path):
    """source_means unset follows source_skip (the style slice's means drew hearts the target does not have,
    BENCHMARKS.md "Session 24"); unset and true train the same generator (one hash), false the style's means with
    the hash from before the option existed; the built spec carries the resolved value."""
    from styleseg.config import config_hash, hash_view
    from styleseg.errors import ConfigError

    skip = {"image_input": True, "source_skip": True}
    unset, true, false = (GeneratorConfig.from_flat(**skip, **kw) for kw in ({}, {"source_means": True},
                                                                           {"source_means": False}))
    assert unset.arch.keeps_source_means and true.arch.keeps_source_means and not false.arch.keeps_source_means
    assert config_hash(unset) == config_hash(true) != config_hash(false)
    assert "source_means" not in hash_view(false) and hash_view(unset)["source_means"] is True
    assert not GeneratorConfig.from_flat(image_input=True).arch.keeps_source_means
    assert config_hash(GeneratorConfig()) == config_hash(GeneratorConfig.from_flat(source_means=False))
    assert GeneratorConfig().replace(**skip).arch.keeps_source_means  # a copy re-resolves: None survives to_dict
    with pytest.raises(ConfigError, match="source_means = true needs source_skip"):
        GeneratorConfig.from_flat(image_input=True, source_means=True)
    folder = train_generators(tiny_source, tiny_styles, tmp_path, TINY.replace(**skip, steps=1), progress=False)[0]
    assert load_generator(folder)[0].spec.source_means  # the trained generator, unset in its config


def test_the_presets_build_the_recommended_generator_and_examples_can_ask_for_the_papers():
    """Both presets read the source slice and pass it through low-passed within each segment, at the source's
    means (README, "Which arm to use"); image_input = false with source_skip = false is the paper's label-map
    generator, and its hash ignores source_lowpass, which acts only where the source passes through; asking for
    the paper's generator by image_input alone says what else to set."""
    from styleseg.config import config_hash, resolve
    from styleseg.errors import ConfigError

    for preset in ("quick", "paper"):
        arch = GeneratorConfig.preset(preset).arch
        assert (arch.image_input, arch.source_skip, arch.source_lowpass, arch.keeps_source_means) == (
            True, True, "segment", True)
    paper = resolve(GeneratorConfig, "quick", {"image_input": False, "source_skip": False})
    assert not paper.arch.image_input and not paper.arch.keeps_source_means
    assert config_hash(paper) == config_hash(GeneratorConfig())  # the dataclass defaults: the paper's generator
    with pytest.raises(ConfigError, match="set image_input = false and source_skip = false"):
        resolve(GeneratorConfig, "quick", {"image_input": False})


def test_train_styles_builds_the_presets_generator_or_the_papers_when_asked(tmp_path):
    """`styleseg train-styles --dry-run`: the preset's generator by default, the paper's label-map one with
    --label-maps-only."""
    import json

    from typer.testing import CliRunner

    from styleseg.cli import app

    def arch(*flags):
        r = CliRunner().invoke(app, ["train-styles", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "g"),
                                     "--dry-run", *flags])
        assert r.exit_code == 0, r.output
        return json.loads(r.output)["config"]["arch"]

    assert (arch()["image_input"], arch()["source_skip"]) == (True, True)
    assert (arch("--label-maps-only")["image_input"], arch("--label-maps-only")["source_skip"]) == (False, False)
