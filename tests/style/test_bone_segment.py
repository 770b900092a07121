"""The derived bone segment of the generators (beyond the paper): bone drawn where the source has bone."""

from __future__ import annotations

import numpy as np
import pytest

from styleseg.labels import LabelSchema
from styleseg.style.augment import generate_volume
from styleseg.style.generator import add_bone_segment, load_generator
from styleseg.style.train import GeneratorConfig, fit_generators


def _slice(rng, bone_hu: float, noise: float):
    lab = np.zeros((64, 64), np.uint8)
    lab[4:60, 4:60] = 6  # body
    lab[20:40, 20:40] = 3  # heart
    hu = np.where(lab == 6, 30.0, np.where(lab == 3, 60.0, -1000.0))
    hu[48:56, 28:36] = bone_hu  # a vertebra inside the body
    return lab, hu + rng.normal(0, noise, hu.shape) * (lab > 0)


def test_bone_is_carved_from_body_only_and_noise_makes_no_speckles():
    rng = np.random.default_rng(0)
    lab, hu = _slice(rng, 700.0, 60.0)  # heavy low-dose noise: 300 HU is 4.5 sigma above soft tissue
    out = add_bone_segment(lab, hu, 6, 300.0, 7)
    assert out.dtype == np.uint8 and out.shape == lab.shape
    bone = out == 7
    assert bone[49:55, 29:35].all()  # the vertebra (smoothing may round its corners)
    assert not bone[:44].any()  # no speckles in the noisy soft tissue
    assert np.array_equal(out[~bone], lab[~bone])
    assert (out[lab != 6] == lab[lab != 6]).all()  # only body pixels change
    with pytest.raises(ValueError, match="differ"):
        add_bone_segment(lab, hu[:10], 6, 300.0, 7)


def test_generator_keeps_the_source_bone_with_the_style_noise(tmp_path):
    """Bone density is the patient's, not the scanner's: inside the derived bone segment the generated slice is
    the source's bone (low-passed by 0.5 px), level and structure, plus the style's noise; the rest of the body
    gets the style's intensities."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(1)
    s_lab, s_hu = _slice(rng, 700.0, 20.0)  # style: bone at 700 HU
    o_lab, o_hu = _slice(rng, 450.0, 5.0)  # source: its own bone at 450 HU
    rec = [{"index": 0, "case_id": "s", "slice": 0, "tags": {}}]
    cfg = GeneratorConfig.from_flat(crop=32, steps=2, batch=1, base=4, n_res=1, nps_weight=0.0)
    (folder,) = fit_generators(o_hu[None].astype(np.int16), o_lab[None], [s_hu], [s_lab], rec, tmp_path / "g", cfg,
                               LabelSchema.default(), progress=False)
    model, meta = load_generator(folder)
    assert model.spec.bone_hu == 300.0 and model.spec.num_classes == LabelSchema.default().num_classes + 1
    assert model.spec.bone_low_hu == 150.0 and model.spec.bone_source
    gen = generate_volume(model, o_lab[None], o_hu[None], 0, seed=0)[0].astype(float)
    o_bone = add_bone_segment(o_lab, o_hu, 6, 300.0, 7, 150.0) == 7
    lp = ndi.gaussian_filter(o_hu, 0.5)
    assert abs(gen[o_bone].mean() - lp[o_bone].mean()) < 5  # the source's bone level (noise averages out)
    core, rim = np.zeros_like(o_bone), o_bone.copy()
    core[50:54, 30:34] = True
    rim[48:56, 28:36] = False
    want = lp[core].mean() - lp[rim].mean()  # ... and structure: its core above the rim the segment grew into
    assert rim.any() and abs((gen[core].mean() - gen[rim].mean()) - want) < 0.2 * want
    assert 15 < (gen[o_bone] - lp[o_bone]).std() < 60  # with the style's noise (20 HU white, as its soft tissue)
    assert abs(gen[8:16, 8:16].mean() - 30.0) < 20
    with pytest.raises(ValueError, match="source image"):
        generate_volume(model, o_lab[None], None, 0, seed=0)
    off = GeneratorConfig.from_flat(crop=32, steps=2, batch=1, base=4, n_res=1, nps_weight=0.0, bone_hu=0.0)
    (folder,) = fit_generators(o_hu[None].astype(np.int16), o_lab[None], [s_hu], [s_lab], rec, tmp_path / "g0", off,
                               LabelSchema.default(), progress=False)
    model, _ = load_generator(folder)
    assert not model.spec.bone_source
    gen = generate_volume(model, o_lab[None], None, 0, seed=0)[0].astype(float)
    assert gen[50:54, 30:34].mean() < 150  # without the bone segment the vertebra is body
