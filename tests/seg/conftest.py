"""Toy fixtures for the seg tests: tiny synthetic chest-like volumes written as a real dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from seg_builders import toy_case, write_toy_dataset  # noqa: F401

# toy nets are far too small for intra-op threads: on a shared 2-core machine they only add contention
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toyds") / "ds", n_cases=4, missing_heart=(1,))


@pytest.fixture
def toy_cfg():
    from styleseg.seg.train import SegTrainConfig

    return dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=4,
                               epochs=2, steps_per_epoch=3, lr=1e-2, val_fraction=0.25)


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory, toy_dataset) -> Path:
    from styleseg.seg.train import SegTrainConfig, train_segmentation

    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=4,
                              epochs=3, steps_per_epoch=12, lr=2e-2, val_fraction=0.25)
    return train_segmentation([toy_dataset], tmp_path_factory.mktemp("model") / "m", cfg, progress=False)


@pytest.fixture(scope="module")
def context_model(tmp_path_factory, toy_dataset):
    from styleseg.seg.train import SegTrainConfig, train_segmentation

    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=4,
                              epochs=2, steps_per_epoch=4, lr=2e-2, val_fraction=0.25, context=2,
                              windows=("soft_tissue", "lung"))
    return train_segmentation([toy_dataset], tmp_path_factory.mktemp("ctx") / "m", cfg, progress=False)


@pytest.fixture(scope="module")
def position_model(tmp_path_factory, toy_dataset):
    from styleseg.seg.train import SegTrainConfig, train_segmentation

    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=4,
                              epochs=1, steps_per_epoch=3, lr=2e-2, val_fraction=0.25, position=True, context=1)
    return train_segmentation([toy_dataset], tmp_path_factory.mktemp("pos") / "m", cfg, progress=False)
