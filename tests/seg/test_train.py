"""Training: model folder contents, patient split, exact resume, marginal loss on real training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from styleseg.errors import ConfigError, InputError
from styleseg.seg.train import SegTrainConfig, patient_split, train_segmentation


def test_presets_and_validation():
    q, p = SegTrainConfig.preset("quick"), SegTrainConfig.preset("paper")
    assert q.downsample == 1 and p.crop == 512 and p.batch_size == 16 and p.epochs == 30
    with pytest.raises(ConfigError, match="window"):
        SegTrainConfig(windows=("nope",))
    with pytest.raises(ConfigError, match="multiple"):
        SegTrainConfig(crop=100, depth=4)
    with pytest.raises(ConfigError, match="preset"):
        SegTrainConfig.preset("fast")


def test_patient_split_groups_augmented_copies():
    groups = ["A", "A", "A", "B", "B", "C", "D"]
    keys = ["A", "A_s1", "A_s2", "B", "B_s1", "C", "D"]
    v = patient_split(groups, 0.25, seed=3, keys=keys)
    for g in set(groups):  # a patient is wholly on one side
        assert len({v[i] for i in range(len(groups)) if groups[i] == g}) == 1
    assert sum(set(g for g, x in zip(groups, v, strict=True) if x).__len__() for _ in [0]) == 1
    assert patient_split(groups, 0.25, 3, keys=keys) == v  # reproducible
    explicit = patient_split(groups, 0.25, 3, val_cases=["B_s1"], keys=keys)
    assert explicit == [False, False, False, True, True, False, False]
    with pytest.raises(ConfigError):
        patient_split(groups, 0.25, 3, val_cases=["Z"], keys=keys)


def test_model_folder_and_log(toy_model):
    meta = json.loads((toy_model / "model.json").read_text())
    assert meta["kind"] == "segmentation" and meta["complete"] is True
    assert meta["architecture"]["base_channels"] == 4 and meta["windows"] == ["soft_tissue"]
    assert meta["downsample"] == 1 and len(meta["split"]["val"]) == 1 and len(meta["split"]["train"]) == 3
    assert 1 <= meta["best_epoch"] <= 3 and set(meta["best_val_dice"]) >= {"lung_left", "lung_right"}
    lines = [json.loads(x) for x in (toy_model / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert (toy_model / "checkpoint.pt").exists()
    # toy anatomy is easy: the lungs are learnt in 36 steps
    assert meta["best_val_dice"]["lung_left"] > 0.5


def test_resume_is_exact(tmp_path, toy_dataset, toy_cfg):
    full = train_segmentation([toy_dataset], tmp_path / "full", toy_cfg, progress=False)
    part = tmp_path / "part"
    train_segmentation([toy_dataset], part, toy_cfg, progress=False, stop_after_steps=4)  # mid-epoch 2
    ck = torch.load(part / "checkpoint.pt", weights_only=True)
    assert ck["counters"]["global_step"] == 4 and ck["counters"]["epoch"] == 1
    with pytest.raises(InputError, match="resume"):
        train_segmentation([toy_dataset], part, toy_cfg, progress=False)
    train_segmentation([toy_dataset], part, toy_cfg, progress=False, resume=True)
    a = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [json.loads(x)["loss"] for x in (full / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (part / "train_log.jsonl").read_text().splitlines()]
    assert la == lb
    with pytest.raises(ConfigError, match="another config"):
        train_segmentation([toy_dataset], part, dataclasses.replace(toy_cfg, lr=0.5), progress=False, resume=True)


def test_extra_transform_hook_is_applied(tmp_path, toy_dataset, toy_cfg):
    seen = []

    def hook(hu, rng):
        seen.append((hu.shape, hu.dtype))
        return hu + rng.normal(0, 1, hu.shape)

    cfg = dataclasses.replace(toy_cfg, epochs=1, steps_per_epoch=2)
    train_segmentation([toy_dataset], tmp_path / "m", cfg, val_cases=[], progress=False, extra_transform=hook)
    assert len(seen) == 8 and seen[0] == ((24, 24), np.float32)


def test_case_without_heart_does_not_lower_heart(tmp_path):
    """Two toy models on the same data in which 1 of 2 cases did not annotate the heart: with the
    marginal loss the heart is still predicted on a case with a heart; when the unannotated hearts
    are taught as body (naive loss), heart predictions are suppressed."""
    from seg_builders import toy_case, write_toy_dataset

    from styleseg.seg.predict import Predictor

    ds = write_toy_dataset(tmp_path / "ds", n_cases=2, missing_heart=(1,), seed=5, n=4)
    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=4,
                              epochs=1, steps_per_epoch=150, lr=1e-2, val_fraction=0.0, foreground_prob=0.0,
                              elastic_prob=0.0)
    test_vol, test_lab = toy_case(np.random.default_rng(9), n=2)
    heart = test_lab == 3
    res = {}
    for marginal in (True, False):
        m = train_segmentation([ds], tmp_path / f"m{marginal}", dataclasses.replace(cfg, marginal_loss=marginal),
                               progress=False)
        pred = Predictor(m).predict_array(test_vol)
        res[marginal] = (pred[heart] == 3).mean()
    assert res[True] > 0.8  # measured 1.0
    assert res[False] < 0.2  # measured 0.0
