"""Position channels (``train_seg.position``): each pixel's place in its slice's body box, so that a crop
showing one lung knows which side of the patient it is on. Training crops and whole-slice inference must
give the same anatomical pixel the same value."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from styleseg.seg.predict import Predictor, body_frame, position_maps


def _slab(h: int = 40, w: int = 48, box=(10, 29, 6, 41)) -> np.ndarray:
    """Air with one soft-tissue rectangle (rows y0..y1, columns x0..x1 inclusive) as the body."""
    hu = np.full((h, w), -1000.0, np.float32)
    y0, y1, x0, x1 = box
    hu[y0:y1 + 1, x0:x1 + 1] = 40.0
    return hu


def test_body_frame_is_the_body_box():
    fr = body_frame(np.stack([_slab(), np.full((40, 48), -1000.0, np.float32)]))
    np.testing.assert_allclose(fr[0], [19.5, 23.5, 9.5, 17.5])  # centre and half-extent of rows 10-29, cols 6-41
    np.testing.assert_allclose(fr[1], [19.5, 23.5, 20.0, 24.0])  # no body: the whole slice


def test_body_frame_survives_low_dose_noise():
    """A chest of an 8-px wall of fat (-100 HU) around lungs (-850 HU) and a mediastinum, with 250 HU of white
    noise (the noisiest generated style of the demo): unsmoothed, the opening in derive_body breaks the thin wall
    and the frame shrinks to a fragment; the 2-px low-pass of body_frame finds the whole body box."""
    rng = np.random.default_rng(0)
    hu = np.full((96, 128), -1000.0, np.float32)
    hu[20:80, 10:118] = -100.0
    hu[28:72, 18:110] = -850.0
    hu[28:72, 56:72] = 40.0
    hu += rng.normal(0, 250, hu.shape).astype(np.float32)
    want = [49.5, 63.5, 29.5, 53.5]  # rows 20-79, columns 10-117
    np.testing.assert_allclose(body_frame(hu)[0], want, atol=1.0)
    assert np.abs(body_frame(hu, smooth_px=0.0)[0] - want).max() > 10


def test_position_maps_run_minus_one_to_one_across_the_body():
    fr = body_frame(_slab())[0]
    p = position_maps(fr, np.arange(40)[:, None], np.arange(48)[None, :])
    assert p.shape == (2, 40, 48) and p.dtype == np.float32
    assert p[0, 20, 6] == pytest.approx(-1.0) and p[0, 20, 41] == pytest.approx(1.0)  # x: right to left edge
    assert p[1, 10, 20] == pytest.approx(-1.0) and p[1, 29, 20] == pytest.approx(1.0)  # y: front to back
    # the same anatomy in a wider field of view, shifted: the same values on the body
    big = np.full((64, 80), -1000.0, np.float32)
    big[7:47, 20:68] = _slab()
    q = position_maps(body_frame(big)[0], np.arange(64)[:, None], np.arange(80)[None, :])
    np.testing.assert_allclose(q[:, 7:47, 20:68], p, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1])
def test_batcher_crops_carry_the_inference_positions_and_keep_the_random_draws(axis):
    """A crop pixel gets the value inference gives its source pixel of the whole slice. The body is a HU ramp
    along ``axis`` (100 + row or column), so a crop pixel's HU says where in the slice it came from (bilinear
    sampling of a ramp is exact inside the body). The HU channels (the random draws) are those of a batcher
    without position channels."""
    from styleseg.data.transforms import TrainAugment, TrainAugmentConfig
    from styleseg.seg.train import _Batcher, _Case

    img = np.stack([_slab(box=(8 + z, 30, 4 + z, 40)) for z in range(3)])
    ramp = np.broadcast_to(np.arange(img.shape[1 + axis], dtype=np.float32).reshape((-1, 1) if axis == 0 else (1, -1)),
                           img.shape[1:])
    img = np.where(img > 0, 100 + ramp, img).astype(np.int16)
    lab = (img > -500).astype(np.uint8) * 3
    case = _Case("c", "c", img, lab, np.ones(7, bool), (1.0, 1.0))
    # crops centred on organ pixels (integer centres): every sample at a half-pixel, so a crop pixel that
    # mixes in air drops far below the body's HU
    aug = TrainAugment(TrainAugmentConfig(crop=16, rotate_deg=0.0, scale=(1.0, 1.0), elastic_prob=0.0,
                                          foreground_prob=1.0), (3,))
    b = _Batcher([case], aug, ("soft_tissue",), 5, None, position=True)
    x, y, _ = b.next(8, 0, 1)
    x0, y0, _ = _Batcher([case], aug, ("soft_tissue",), 5, None).next(8, 0, 1)
    assert x.shape == (8, 3, 16, 16)
    np.testing.assert_array_equal(x[:, :1].numpy(), x0.numpy())
    np.testing.assert_array_equal(y.numpy(), y0.numpy())
    z_of = [int(b.index[i][1]) for i in np.random.Generator(np.random.PCG64(5)).integers(len(b.index), size=8)]
    checked = 0
    for i in range(8):
        hu = x[i, 0].numpy()
        inside = hu > 0
        cy, cx, hy, hx = body_frame(img[z_of[i]])[0]
        src = hu[inside] - 100  # the source row (axis 0) or column (axis 1) of each body pixel of the crop
        want = (src - cx) / hx if axis == 1 else (src - cy) / hy
        np.testing.assert_allclose(x[i, 1 + (1 - axis)].numpy()[inside], want, atol=1e-5)
        checked += int(inside.sum())
    assert checked > 500


@pytest.fixture(scope="module")
def position_model(tmp_path_factory, toy_dataset):
    from styleseg.seg.train import SegTrainConfig, train_segmentation

    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=4,
                              epochs=1, steps_per_epoch=3, lr=2e-2, val_fraction=0.25, position=True, context=1)
    return train_segmentation([toy_dataset], tmp_path_factory.mktemp("pos") / "m", cfg, progress=False)


def test_position_model_folder_and_prediction(position_model):
    meta = json.loads((position_model / "model.json").read_text())
    assert meta["position"] is True and meta["architecture"]["in_channels"] == 3 + 2
    p = Predictor(position_model)
    assert p.position
    from seg_builders import toy_case

    arr, _ = toy_case(np.random.default_rng(3), n=5, size=30)  # 30 px: padded to 32 at inference
    lab = p.predict_array(arr.astype(np.float32))
    assert lab.shape == arr.shape and lab.dtype == np.uint8
    parts = list(p.predict_chunks(np.array_split(arr.astype(np.float32), [2, 3])))
    np.testing.assert_array_equal(np.concatenate(parts), lab)


def test_models_trained_before_the_low_pass_keep_their_frames(position_model, tmp_path):
    """model.json records the low-pass the frames were found with; a model without the entry (trained before
    it existed) is given unsmoothed frames, as in its training."""
    import shutil

    assert json.loads((position_model / "model.json").read_text())["position_smooth_px"] == 2.0
    assert Predictor(position_model).position_smooth_px == 2.0
    old = tmp_path / "old"
    shutil.copytree(position_model, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["position_smooth_px"]
    (old / "model.json").write_text(json.dumps(meta))
    assert Predictor(old).position_smooth_px == 0.0


def test_inference_feeds_the_unpadded_positions(position_model):
    """Record what the network sees: the position channels on the padded grid are those of the original
    pixels (the padding offset is undone), in the frame of each slice's own body."""
    import torch

    p = Predictor(position_model)
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(x.shape[0], 7, *x.shape[-2:])

    p.model = Spy()
    hu = np.stack([_slab(h=30, w=45, box=(5 + z, 24, 3, 30 + z)) for z in range(3)])  # padded to 32 x 48
    p.predict_array(hu)
    x = torch.cat(seen).numpy()
    assert x.shape == (3, 5, 32, 48)
    for z in range(3):
        want = position_maps(body_frame(hu[z])[0], np.arange(30)[:, None], np.arange(45)[None, :])
        np.testing.assert_allclose(x[z, 3:, 1:31, 1:46], want, atol=1e-6)  # pads: top 1, left 1
