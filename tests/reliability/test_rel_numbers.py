"""Impossible numbers and bad settings: each is refused where it is parsed, with one line and exit 2, before any
work (issue 16, "invalid numbers accepted"); nothing is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rel_helpers import expect_error

TOML = """
name = "x"
{extra}

[data]
benchmark = true
"""


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import Volume
    from styleseg.labels import LabelSchema
    from styleseg.seg.train import SegTrainConfig, train_segmentation

    root = tmp_path_factory.mktemp("num")
    lab = np.zeros((2, 32, 32), np.uint8)
    lab[:, 4:28, 4:28] = 6
    lab[:, 8:16, 8:16] = 1
    hu = np.where(lab == 6, 40, np.where(lab == 1, -850, -1000)).astype(np.int16)
    with DatasetWriter(root / "ds", "ds", LabelSchema.default()) as w:
        img = Volume(hu, (1.0, 1.0, 3.0))
        w.add_case("a", img, img.with_array(lab))
    train_segmentation([root / "ds"], root / "m", SegTrainConfig(base_channels=4, depth=2, crop=16, batch_size=2,
                                                                 epochs=1, steps_per_epoch=1), progress=False,
                       val_cases=[])
    return root


@pytest.mark.parametrize("extra, words", [
    ("[train_seg]\nsteps_per_epoch = -1", ["steps_per_epoch", "[train_seg]"]),
    ("[train_seg]\nlr = -1", ["lr must be > 0"]),
    ("[train_seg]\ncrop = 0", ["crop must be >= 1"]),
    ("[train_seg]\nbatch_size = 0", ["batch_size must be >= 1"]),
    ("[train_seg]\nlr = nan", ["expected a finite number"]),
    ("[generators]\nsteps = 0", ["steps, batch and lr must be positive"]),
    ("[evaluate]\nn_boot = -3", ["n_boot must be >= 1"]),
    ("[evaluate]\nnboot = 3", ["unknown key 'nboot'", "did you mean 'n_boot'"]),
    ("seeds = [0, 0]", ["distinct"]),
    ("jobs = 0", ["jobs = 0"]),
    ("arms = [\"baseline\", \"cyclic_ref\"]", ["starts from the model of 'styleseg_ref'"]),
    ("arms = [\"baseline\", \"styleseg_ft_ref\"]", ["starts from the model of 'reference'"]),
])
def test_an_experiment_with_an_impossible_setting_is_refused_before_any_stage(tmp_path, extra, words):
    p = tmp_path / "bad.toml"
    p.write_text(TOML.format(extra=extra))
    expect_error(["run", str(p), "--out", str(tmp_path / "run")], input=f"experiment with `{extra.splitlines()[-1]}`",
                 contains=["bad.toml", *words],
                 left="no run folder", tmp=tmp_path)
    assert not (tmp_path / "run").exists()


def test_segment_refuses_an_impossible_batch_size(model_and_data, tmp_path):
    root = model_and_data
    expect_error(["segment", str(root / "ds"), "--model", str(root / "m"), "--out", str(tmp_path / "o"),
                  "--batch-size", "-1"], input="segment --batch-size -1", contains=["batch size must be >= 1"],
                 left="nothing", tmp=tmp_path)
    assert not (tmp_path / "o").exists()


def test_evaluate_refuses_zero_bootstrap_resamples(model_and_data, tmp_path):
    root = model_and_data
    expect_error(["evaluate", "--pred", str(root), "--ref", str(root / "ds"), "--n-boot", "0"],
                 input="evaluate --n-boot 0", contains=["n_boot must be >= 1"], left="nothing", tmp=tmp_path)


def test_train_seg_refuses_an_impossible_config_file(model_and_data, tmp_path):
    root = model_and_data
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[train_seg]\nepochs = 0\n")
    expect_error(["train-seg", str(root / "ds"), "--out", str(tmp_path / "m2"), "--config", str(cfg)],
                 input="train-seg config with `epochs = 0`", contains=["epochs must be >= 1"], left="nothing",
                 tmp=tmp_path)
    assert not Path(tmp_path / "m2").exists()


def test_train_seg_refuses_to_start_from_a_model_of_another_architecture(model_and_data, tmp_path):
    root = model_and_data
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[train_seg]\nbase_channels = 8\ndepth = 2\ncrop = 16\nbatch_size = 2\nepochs = 1\n")
    expect_error(["train-seg", str(root / "ds"), "--out", str(tmp_path / "m2"), "--config", str(cfg), "--no-val",
                  "--init-from", str(root / "m")], input="train-seg --init-from a model with 4 base channels, not 8",
                 contains=[str(root / "m" / "model.json"), "differs in architecture"], left="nothing", tmp=tmp_path)
    assert not Path(tmp_path / "m2" / "model.json").exists()


@pytest.mark.parametrize("device, words", [
    pytest.param("cuda", ["no CUDA GPU", "--device cpu"], id="cuda-without-gpu"),
    pytest.param("cuda:7", ["CUDA GPU"], id="cuda-index"),
    pytest.param("gpu0", ["not a device"], id="typo"),
])
def test_segment_refuses_a_device_this_machine_lacks(model_and_data, tmp_path, device, words):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the GPU asked for")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    root = model_and_data
    expect_error(["segment", str(root / "ds"), "--model", str(root / "m"), "--out", str(tmp_path / "o"),
                  "--device", device], input=f"segment --device {device}", contains=words, left="nothing",
                 tmp=tmp_path)
    assert not (tmp_path / "o").exists()
