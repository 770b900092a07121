"""Generators that also see the source slice (``image_input``, beyond the paper): the source's own
anatomy inside a segment (fat, muscle, vessels: what a label map does not carry) reaches the output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from styleseg.labels import LabelSchema
from styleseg.style.augment import generate_volume
from styleseg.style.generator import load_generator
from styleseg.style.train import GeneratorConfig, fit_generators


def test_image_input_generator_reads_the_source_slice(tmp_path):
    rng = np.random.default_rng(0)
    lab = np.zeros((48, 48), np.uint8)
    lab[4:44, 4:44] = 6
    lab[16:32, 16:32] = 3
    hu = np.where(lab == 6, 30.0, np.where(lab == 3, 60.0, -1000.0)) + rng.normal(0, 10, lab.shape) * (lab > 0)
    rec = [{"index": 0, "case_id": "s", "slice": 0, "tags": {}}]
    cfg = GeneratorConfig.from_flat(crop=32, steps=2, batch=1, base=4, n_res=1, nps_weight=0.0, bone_hu=0.0,
                                    image_input=True)
    (folder,) = fit_generators(hu[None].astype(np.int16), lab[None], [hu], [lab], rec, tmp_path / "g", cfg,
                               LabelSchema.default(), progress=False)
    model, _ = load_generator(folder)
    assert model.spec.image_input
    with torch.no_grad():  # let the (zero-initialised) output layer see the input, as after longer training
        model.out.weight.normal_(0, 0.5)
    other = hu.copy()
    other[6:12, 6:12] -= 120.0  # a fat pocket in the body that the label map does not show
    a = generate_volume(model, lab[None], hu[None], 0, seed=5)[0].astype(float)
    b = generate_volume(model, lab[None], other[None], 0, seed=5)[0].astype(float)
    assert np.abs(a - b)[4:14, 4:14].mean() > np.abs(a - b)[30:44, 30:44].mean()
    assert np.abs(a - b)[4:14, 4:14].max() > 0
    with pytest.raises(ValueError, match="source"):
        generate_volume(model, lab[None], None, 0, seed=5)


def _skip_generator(tmp_path, hu, lab, **kw):
    rec = [{"index": 0, "case_id": "s", "slice": 0, "tags": {}}]
    cfg = GeneratorConfig.from_flat(crop=32, steps=2, batch=1, base=4, n_res=1, nps_weight=0.0, bone_hu=0.0,
                                    image_input=True, **kw)
    (folder,) = fit_generators(hu[None].astype(np.int16), lab[None], [hu], [lab], rec, tmp_path / "g", cfg,
                               LabelSchema.default(), progress=False)
    model, _ = load_generator(folder)
    with torch.no_grad():  # no learned residual and no added noise: what passes through is left
        model.out.weight.zero_()
        model.out.bias.zero_()
        model.noise_amp.zero_()
    return model


def test_source_skip_passes_the_source_anatomy_at_the_style_means(tmp_path):
    """``source_skip``: a structure the label map does not show (a -120 HU pocket) reaches the output at
    nearly full contrast, the segment means are exactly the style's, and the source's own noise is low-passed
    away (sigma 1 px keeps ~1/(2 sqrt(pi)) of white noise)."""
    rng = np.random.default_rng(0)
    lab = np.zeros((48, 48), np.uint8)
    lab[4:44, 4:44] = 6
    lab[16:32, 16:32] = 3
    hu = np.where(lab == 6, 30.0, np.where(lab == 3, 60.0, -1000.0))
    model = _skip_generator(tmp_path, hu, lab, source_skip=True, source_means=False)
    assert model.spec.source_skip and model.spec.source_sigma == 1.0
    plain = _skip_generator(tmp_path / "plain", hu, lab)
    src = hu + rng.normal(0, 10, lab.shape) * (lab > 0)
    src[6:14, 6:14] -= 120.0
    out = generate_volume(model, lab[None], src[None], 0, seed=5)[0].astype(float)
    ref = generate_volume(plain, lab[None], src[None], 0, seed=5)[0].astype(float)
    style_mean = {v: float(model.prior_hu[0, v]) for v in (3, 6)}
    for v in (3, 6):
        assert out[lab == v].mean() == pytest.approx(style_mean[v], abs=0.6)  # int16 rounding
    body = out[lab == 6]
    pocket = out[9:11, 9:11].mean() - np.median(body)
    assert pocket < -100  # the pocket passes through (blurred by 1 px)
    assert abs(ref[9:11, 9:11].mean() - np.median(ref[lab == 6])) < 1  # without the skip it does not
    quiet = out[36:42, 36:42]
    assert 1.0 < quiet.std() < 4.5  # source noise std 10 HU, low-passed


def test_source_skip_needs_image_input():
    from styleseg.errors import ConfigError
    from styleseg.style.generator import GeneratorSpec

    with pytest.raises(ConfigError, match="source_skip"):
        GeneratorConfig.from_flat(source_skip=True)
    with pytest.raises(ValueError, match="source_skip"):
        GeneratorSpec(num_classes=8, source_skip=True)


def test_gaussian_blur_keeps_constants_and_sigma_zero_is_identity():
    from styleseg.style.generator import gaussian_blur

    x = torch.full((2, 1, 9, 12), 37.0)
    torch.testing.assert_close(gaussian_blur(x, 1.5), x)
    y = torch.randn(1, 1, 16, 16)
    assert gaussian_blur(y, 0.0) is y
    assert gaussian_blur(y, 1.0).std() < 0.5 * y.std()


def test_segment_lowpass_keeps_the_body_outline_sharp(tmp_path):
    """``source_lowpass = "segment"``: the source's noise is low-passed as before inside a segment, but the
    body outline (~1000 HU from air to tissue) passes through as a step. The whole-slice Gaussian leaves the
    halo measured on real CT (BENCHMARKS.md, session 19): air a pixel outside the skin ~20 % of the way to
    tissue, the skin pixel as much darker."""
    rng = np.random.default_rng(0)
    lab = np.zeros((48, 48), np.uint8)
    lab[4:44, 4:44] = 6
    lab[16:32, 16:32] = 3
    hu = np.where(lab == 6, 30.0, np.where(lab == 3, 60.0, -1000.0))
    src = hu + rng.normal(0, 10, lab.shape) * (lab > 0)
    seg = _skip_generator(tmp_path / "seg", hu, lab, source_skip=True, source_lowpass="segment")
    gauss = _skip_generator(tmp_path / "gauss", hu, lab, source_skip=True)
    assert seg.spec.source_lowpass == "segment" and gauss.spec.source_lowpass == "gaussian"
    out = {k: generate_volume(m, lab[None], src[None], 0, seed=5)[0].astype(float)
           for k, m in (("seg", seg), ("gauss", gauss))}
    air, skin = float(seg.prior_hu[0, 0]), float(seg.prior_hu[0, 6])
    step = skin - air
    outside, inside = out["seg"][20:28, 3], out["seg"][20:28, 4]  # the columns either side of the left outline
    assert np.abs(outside - air).max() < 0.02 * step and np.abs(inside - skin).max() < 0.05 * step
    g_out, g_in = out["gauss"][20:28, 3].mean(), out["gauss"][20:28, 4].mean()
    assert g_out - air > 0.15 * step and skin - g_in > 0.15 * step
    quiet = out["seg"][36:42, 36:42]
    assert 1.0 < quiet.std() < 4.5  # inside a segment the noise is low-passed as before


def test_segment_blur_is_a_gaussian_inside_one_segment():
    from styleseg.style.generator import gaussian_blur, segment_blur

    x = torch.randn(2, 1, 20, 24)
    one = torch.ones(2, 1, 20, 24)
    torch.testing.assert_close(segment_blur(x, one, 1.0), gaussian_blur(x, 1.0) / gaussian_blur(one, 1.0))
    two = torch.cat([one, torch.zeros_like(one)], 1)
    two[:, :, :, 12:] = torch.tensor([0.0, 1.0])[None, :, None, None]
    step = torch.where(two[:, 1:] > 0, 100.0, -100.0)
    torch.testing.assert_close(segment_blur(step, two, 1.5), step)
    assert segment_blur(x, two, 0.0) is x


def test_source_lowpass_is_checked():
    from styleseg.errors import ConfigError
    from styleseg.style.generator import GeneratorSpec

    with pytest.raises(ConfigError, match="source_lowpass must be 'gaussian' or 'segment'"):
        GeneratorConfig.from_flat(image_input=True, source_skip=True, source_lowpass="segmnt")
    with pytest.raises(ValueError, match="source_lowpass"):
        GeneratorSpec(num_classes=8, source_lowpass="median")


def test_generated_volume_does_not_depend_on_the_batch(tmp_path):
    """The CPU default runs one slice per call (activations the tuned heap reuses); any batch gives the same
    slices, noise included (drawn in slice order from one generator), up to float rounding to the nearest HU."""
    from styleseg.style.augment import CPU_GEN_BATCH

    rng = np.random.default_rng(1)
    lab = np.zeros((5, 48, 48), np.uint8)
    lab[:, 4:44, 4:44] = 6
    lab[:, 16:32, 16:32] = 3
    hu = (np.where(lab == 6, 30.0, np.where(lab == 3, 60.0, -1000.0)) + rng.normal(0, 10, lab.shape)).astype(np.int16)
    rec = [{"index": 0, "case_id": "s", "slice": 0, "tags": {}}]
    cfg = GeneratorConfig.from_flat(crop=32, steps=2, batch=1, base=4, n_res=1, nps_weight=0.0, bone_hu=0.0,
                                    image_input=True)
    (folder,) = fit_generators(hu[:1], lab[:1], [hu[0].astype(float)], [lab[0]], rec, tmp_path / "g", cfg,
                               LabelSchema.default(), progress=False)
    model, _ = load_generator(folder)
    with torch.no_grad():
        model.out.weight.normal_(0, 0.5)
    calls = []
    hook = model.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    default = generate_volume(model, lab, hu, 0, seed=3)
    hook.remove()
    assert calls == [CPU_GEN_BATCH] * (5 // CPU_GEN_BATCH) + ([5 % CPU_GEN_BATCH] if 5 % CPU_GEN_BATCH else [])
    for b in (2, 4, 8):
        diff = np.abs(generate_volume(model, lab, hu, 0, seed=3, batch=b).astype(int) - default)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert np.ptp(default[:, 20, 20]) > 0  # the slices differ: each got its own noise
