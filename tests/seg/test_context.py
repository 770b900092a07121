"""2.5D input (``context`` neighbouring slices per side as channels): stacking, training batches,
streaming prediction equal to whole-volume prediction, and the model folder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from styleseg.errors import ConfigError
from styleseg.io.volume import Volume, read_nifti, write_nifti
from styleseg.seg.predict import Predictor, context_stack, segment


def test_context_stack_repeats_edges_and_reads_neighbour_chunks():
    hu = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)  # slice z has value z
    got = context_stack(hu, 0, 4, 1)[:, :, 0, 0]
    np.testing.assert_array_equal(got, [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])
    got = context_stack(hu, 0, 4, 2)[:, :, 0, 0]
    np.testing.assert_array_equal(got[0], [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(got[3], [1, 2, 3, 3, 3])
    before, after = np.full((2, 2, 2), -1.0), np.full((1, 2, 2), 9.0)
    got = context_stack(hu, 0, 4, 2, before, after)[:, :, 0, 0]
    np.testing.assert_array_equal(got[0], [-1, -1, 0, 1, 2])
    np.testing.assert_array_equal(got[3], [1, 2, 3, 9, 9])  # 9 is the last slice of the volume: repeated


def test_batcher_stacks_neighbours_in_order():
    from styleseg.data.transforms import TrainAugment, TrainAugmentConfig
    from styleseg.seg.train import _Batcher, _Case

    img = (np.arange(5, dtype=np.int16)[:, None, None] * 100 * np.ones((1, 8, 8), np.int16))
    case = _Case("c", "c", img, np.zeros((5, 8, 8), np.uint8), np.ones(7, bool), (1.0, 1.0))
    aug = TrainAugment(TrainAugmentConfig(crop=8, enabled=False, foreground_prob=0.0))
    calls = []

    def extra(hu, rng):  # an intensity arm: one random draw per sample, the same for every slice of the stack
        v = rng.normal()
        calls.append(v)
        return hu + v

    b = _Batcher([case], aug, ("soft_tissue",), 0, extra, context=1)
    x, _, _ = b.next(16, 0, 1)
    assert x.shape == (16, 3, 8, 8)
    z = np.round((x[:, :, 4, 4].numpy() - np.asarray(calls[::3])[:, None]) / 100).astype(int)
    for row in z:  # (z-1, z, z+1) clamped to the volume
        c = row[1]
        assert list(row) == [max(c - 1, 0), c, min(c + 1, 4)]
    assert np.allclose(calls[0::3], calls[1::3]) and np.allclose(calls[0::3], calls[2::3])


def test_context_is_validated():
    from styleseg.seg.train import SegTrainConfig

    with pytest.raises(ConfigError, match="context"):
        SegTrainConfig(context=5)


@pytest.fixture(scope="module")
def context_model(tmp_path_factory, toy_dataset):
    from styleseg.seg.train import SegTrainConfig, train_segmentation

    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=4,
                              epochs=2, steps_per_epoch=4, lr=2e-2, val_fraction=0.25, context=2,
                              windows=("soft_tissue", "lung"))
    return train_segmentation([toy_dataset], tmp_path_factory.mktemp("ctx") / "m", cfg, progress=False)


def test_context_model_folder(context_model):
    meta = json.loads((context_model / "model.json").read_text())
    assert meta["context"] == 2 and meta["architecture"]["in_channels"] == 2 * 5
    assert Predictor(context_model).context == 2


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 50])
def test_streaming_2p5d_equals_whole_volume(tmp_path, context_model, chunk):
    from seg_builders import toy_case

    arr, _ = toy_case(np.random.default_rng(3), n=7, size=28)
    arr = arr + (np.arange(7)[:, None, None] * 40).astype(np.int16)  # neighbours differ: order matters
    vol = Volume(arr, (1.0, 1.0, 3.0))
    src = write_nifti(vol, tmp_path / "in" / "ct.nii.gz")
    p = Predictor(context_model)
    want = p.predict_volume(read_nifti(src)).array
    rep = segment([src], context_model, tmp_path / "out", chunk_slices=chunk)
    assert rep.done == ["ct"], rep.failed
    np.testing.assert_array_equal(read_nifti(tmp_path / "out" / "ct.nii.gz").array, want)
    parts = list(p.predict_chunks(np.array_split(read_nifti(src).array, [1, 2, 5])))
    np.testing.assert_array_equal(np.concatenate(parts), want)


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
