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
    cfg = GeneratorConfig(crop=32, steps=2, batch=1, base=4, n_res=1, nps_weight=0.0, bone_hu=0.0, image_input=True)
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
