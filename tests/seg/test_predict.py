"""Predictor and `segment`: streaming equals in-memory, geometry kept, bad input, continue, shards."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from seg_builders import slab

from styleseg.errors import InputError
from styleseg.io.volume import Volume
from styleseg.seg.inputs import InputSpec, body_frame, context_stack, position_maps
from styleseg.seg.predict import Predictor, infer_slices
from styleseg.seg.unet import UNet, UNetSpec, fold_batch_norm, pad_multiple, unpad


def _ct(seed: int = 0, n: int = 5, spacing: float = 1.0, direction=None) -> Volume:
    from seg_builders import toy_case

    vol, _ = toy_case(np.random.default_rng(seed), n=n, size=30)  # 30: not a multiple of 4 (padding path)
    return Volume(vol, (spacing, spacing, 3.0), (-12.0, 7.0, 40.0),
                  direction or (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_unet_shapes_and_padding():
    net = UNet(UNetSpec(in_channels=2, num_classes=5, base_channels=4, depth=3)).eval()
    x = torch.randn(2, 2, 30, 20)
    xp, pads = pad_multiple(x, 8, -1.0)
    assert xp.shape[-2:] == (32, 24) and torch.equal(unpad(xp, pads), x)
    assert net(xp).shape == (2, 5, 32, 24)
    out = infer_slices(net, np.random.default_rng(0).normal(0, 100, (3, 30, 20)),
                       InputSpec(windows=("soft_tissue", "lung"), downsample=2), 8, batch_size=2)
    assert out.shape == (3, 30, 20) and out.dtype == np.uint8 and out.max() < 5




def test_folded_batch_norm_gives_the_trained_networks_logits():
    torch.manual_seed(0)
    net = UNet(UNetSpec(in_channels=1, num_classes=4, base_channels=4, depth=2))
    net.train()
    for _ in range(3):  # running statistics and affine far from the identity
        net(torch.randn(4, 1, 16, 16) * 3 + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-1.0, 1.0)
    net.eval()
    folded = fold_batch_norm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 2 * (2 * 2 + 1)  # the original kept
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


def test_flipped_orientation_is_canonicalised(tmp_path, toy_model):
    vol = _ct()
    # the same physical image stored with x and y axes reversed
    flipped = Volume(vol.array[:, ::-1, ::-1].copy(), vol.spacing, vol.origin, (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    p = Predictor(toy_model)
    a = p.predict_volume(vol).array
    b = p.predict_volume(flipped).array
    np.testing.assert_array_equal(b[:, ::-1, ::-1], a)




def test_bad_model_folders(tmp_path, toy_model):
    m = tmp_path / "m"
    shutil.copytree(toy_model, m)
    (m / "weights.pt").unlink()
    with pytest.raises(InputError, match="weights file is missing"):
        Predictor(m)
    shutil.copy(toy_model / "weights.pt", m / "weights.pt")
    meta = json.loads((m / "model.json").read_text())
    (m / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(InputError, match="not supported by this version"):
        Predictor(m)
    (m / "model.json").write_text(json.dumps({**meta, "architecture": {**meta["architecture"], "base_channels": 8}}))
    with pytest.raises(InputError, match="do not match the architecture"):
        Predictor(m)








def test_context_model_folder(context_model):
    meta = json.loads((context_model / "model.json").read_text())
    assert meta["context"] == 2 and meta["architecture"]["in_channels"] == 2 * 5
    assert Predictor(context_model).context == 2


def test_chunked_prediction_feeds_the_true_neighbours(context_model):
    """Record what the network sees: chunked streaming gives it exactly the whole-volume 2.5D stacks."""
    import torch

    p = Predictor(context_model, batch_size=3)
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x[:, :5].clone())  # the soft-tissue window of the 5 stacked slices
            return torch.zeros(x.shape[0], 7, *x.shape[-2:])

    p.model = Spy()
    hu = (np.arange(9, dtype=np.float32)[:, None, None] * 30 - 100) * np.ones((1, 8, 8), np.float32)
    for split in ([9], [1, 2, 6], [4, 5], [1] * 9):
        seen.clear()
        list(p.predict_chunks(np.split(hu, np.cumsum(split)[:-1])))
        got = torch.cat(seen)[:, :, 0, 0].numpy() * 400 - 160  # back to HU
        want = context_stack(hu, 0, 9, 2)[:, :, 0, 0]
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_position_model_folder_and_prediction(position_model):
    meta = json.loads((position_model / "model.json").read_text())
    assert meta["position"] is True and meta["architecture"]["in_channels"] == 3 + 2
    p = Predictor(position_model)
    assert p.inputs.position
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
    assert Predictor(position_model).inputs.position_smooth_px == 2.0
    old = tmp_path / "old"
    shutil.copytree(position_model, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["position_smooth_px"]
    (old / "model.json").write_text(json.dumps(meta))
    assert Predictor(old).inputs.position_smooth_px == 0.0


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
    hu = np.stack([slab(h=30, w=45, box=(5 + z, 24, 3, 30 + z)) for z in range(3)])  # padded to 32 x 48
    p.predict_array(hu)
    x = torch.cat(seen).numpy()
    assert x.shape == (3, 5, 32, 48)
    for z in range(3):
        want = position_maps(body_frame(hu[z])[0], np.arange(30)[:, None], np.arange(45)[None, :])
        np.testing.assert_allclose(x[z, 3:, 1:31, 1:46], want, atol=1e-6)  # pads: top 1, left 1


def test_a_model_whose_training_has_not_finished_is_refused(tmp_path, toy_model, toy_dataset):
    """model.json says ``complete: false`` while training runs (or after it was killed): the predictor refuses
    it with a message naming the fix, unless asked for the best epoch so far."""
    from typer.testing import CliRunner

    from styleseg.cli import app

    m = tmp_path / "m"
    shutil.copytree(toy_model, m)
    meta = json.loads((m / "model.json").read_text())
    (m / "model.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(InputError, match="has not finished.*--allow-incomplete"):
        Predictor(m)
    assert Predictor(m, allow_incomplete=True).inputs.windows == ("soft_tissue",)
    res = CliRunner().invoke(app, ["segment", str(toy_dataset), "--model", str(m), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "has not finished" in res.output and not (tmp_path / "o").exists()
    res = CliRunner().invoke(app, ["segment", str(toy_dataset), "--model", str(m), "--out", str(tmp_path / "o"),
                                   "--allow-incomplete"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "o").glob("*.nii.gz"))) == 4


class _Local(torch.nn.Module):
    """A model whose labels depend on each pixel alone, as a trained U-Net's do far from the edge: tissue above
    40 HU (the soft-tissue window past 0.5) is 1 in front of and right of the body's centre (both position
    channels < 0), 2 elsewhere; air is label ``air``. It records the shape of every input it is given."""

    def __init__(self, air: int = 0):
        super().__init__()
        self.air = air
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        tissue = (x[:, 0] > 0.5).float()
        front_right = ((x[:, 1] < 0) & (x[:, 2] < 0)).float()
        out = [tissue * 0, tissue * front_right, tissue * (1 - front_right)]
        out[self.air] = out[self.air] + (1 - tissue)
        return 10 * torch.stack(out, 1)


def _chest(n: int = 3) -> np.ndarray:
    """Air, a chest far right of centre in a 200 x 320 field and an arm apart from it, moving down slice by
    slice: the body's box starts well inside the slice, so a position channel measured in the box's own
    coordinates would move the boundaries between labels 1 and 2."""
    hu = np.full((n, 200, 320), -1000.0, np.float32)
    for z in range(n):
        hu[z, 40 + z:120 + z, 150:260] = 60.0
        hu[z, 60:90, 275:290] = 60.0
    return hu


@pytest.mark.parametrize("air", [0, 1])
def test_the_crop_to_the_body_labels_like_the_whole_slice(air):
    """The network sees the body's box (smaller than the slice, a multiple of 2**depth) with the position channels
    of the whole slice; its labels and confidences are those of the whole-slice pass. Outside the box the logits
    are those at its edge, so even a model that calls air a structure (air=1) labels the slice alike."""
    spec = InputSpec(windows=("soft_tissue",), position=True)
    hu = _chest()
    labs, confs, shapes = [], [], []
    for crop in (True, False):
        net = _Local(air)
        conf = np.zeros(len(hu))
        labs.append(infer_slices(net, hu, spec, 16, crop=crop, confidence=conf))
        confs.append(conf)
        shapes.append(net.seen)
    np.testing.assert_array_equal(labs[0], labs[1])
    np.testing.assert_allclose(confs[0], confs[1])
    assert (labs[0][:, 60:90, 275:290] == 2).all() and (labs[0][:, 100:118, 152:160] == 2).all()
    assert (labs[0][:, 45:70, 152:160] == 1).all()
    assert (labs[0][:, 0, 0] == air).all()
    (h, w) = shapes[0][0][-2:]
    assert h % 16 == 0 and w % 16 == 0 and h * w < 0.7 * 208 * 320 and shapes[1][0][-2:] == (208, 320)


def test_no_body_means_the_whole_slice_and_the_network_takes_two_slices_a_call():
    spec = InputSpec(windows=("soft_tissue",), position=True)
    net = _Local()
    air = np.full((5, 40, 40), -1000.0, np.float32)
    assert not infer_slices(net, air, spec, 16, batch_size=5).any()
    assert net.seen == [(2, 3, 48, 48), (2, 3, 48, 48), (1, 3, 48, 48)]
    net.seen.clear()
    infer_slices(net, air, spec, 16, batch_size=5, net_batch=5)
    assert net.seen == [(5, 3, 48, 48)]


def test_the_allocator_is_tuned_once_and_a_users_setting_is_left_alone():
    """glibc: mallopt succeeds (True), and a second call does nothing more; with every MALLOC_*_ variable set by
    the user it changes nothing (False)."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    code = "from styleseg.trainer import tune_allocator as t; print(t(), t())"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
    env.update(MALLOC_MMAP_THRESHOLD_="1", MALLOC_TRIM_THRESHOLD_="1", MALLOC_TOP_PAD_="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
