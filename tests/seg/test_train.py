"""Training: model folder contents, patient split, exact resume, marginal loss on real training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from styleseg.errors import ConfigError, InputError
from styleseg.seg.train import SegTrainConfig, train_segmentation


def test_presets_and_validation():
    q, p = SegTrainConfig.preset("quick"), SegTrainConfig.preset("paper")
    assert q.downsample == 1 and p.crop == 512 and p.batch_size == 16 and p.epochs == 30
    with pytest.raises(ConfigError, match="window"):
        SegTrainConfig(windows=("nope",))
    with pytest.raises(ConfigError, match="multiple"):
        SegTrainConfig(crop=100, depth=4)
    with pytest.raises(ConfigError, match="preset"):
        SegTrainConfig.preset("fast")
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="lr_hold"):
            SegTrainConfig(lr_hold=bad)
    for bad in (-0.5, 1.5):
        with pytest.raises(ConfigError, match="ce_balance"):
            SegTrainConfig(ce_balance=bad)


def test_poly_schedule_with_a_hold():
    from styleseg.trainer import PolyLR

    plain, held = PolyLR(100), PolyLR(100, hold=0.6)
    # hold 0 is nnU-Net's decay from the first step
    assert [plain(s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5**0.9, 0.0])
    # hold 0.6: full rate up to step 60, then the same curve squeezed into the last 40 steps
    assert [held(s) for s in (0, 30, 60)] == [1.0, 1.0, 1.0]
    assert [held(s) for s in (70, 80, 100, 120)] == pytest.approx([0.75**0.9, 0.5**0.9, 0.0, 0.0])
    with pytest.raises(ValueError, match="hold"):
        PolyLR(100, hold=1.0)


def test_lr_hold_reaches_the_optimiser(tmp_path, toy_dataset, toy_cfg):
    """The logged learning rate of each epoch follows the held schedule in a real training run."""
    cfg = dataclasses.replace(toy_cfg, epochs=4, steps_per_epoch=5, lr=1e-3, lr_hold=0.5)
    out = tmp_path / "m"
    train_segmentation([toy_dataset], out, cfg, progress=False)
    lrs = [json.loads(x)["lr"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    # the rate after each epoch's last step: steps 5 and 10 still held; 15 and 20 on the decay over steps 10..20
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3 * 0.5**0.9, 0.0])


def test_real_share_reaches_the_batcher(tmp_path, toy_dataset, toy_cfg, monkeypatch):
    """[train_seg] real_share is what the training's sampler draws with (its effect: tests/seg/test_data.py)."""
    import styleseg.seg.train as train_mod

    seen = []

    class Spy(train_mod.Batcher):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.real_share)

    monkeypatch.setattr(train_mod, "Batcher", Spy)
    train_segmentation([toy_dataset], tmp_path / "m", dataclasses.replace(toy_cfg, epochs=1, steps_per_epoch=1,
                                                                          real_share=0.4), progress=False)
    assert seen == [0.4]


def test_ce_balance_reaches_the_loss(tmp_path, toy_dataset, toy_cfg, monkeypatch):
    """[train_seg] ce_balance is what the training's loss is called with (its effect: tests/seg/test_losses.py)."""
    import styleseg.seg.losses as losses

    seen, real = [], losses.marginal_dice_ce

    def spy(*args, **kwargs):
        seen.append(kwargs.get("ce_balance"))
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "marginal_dice_ce", spy)
    train_segmentation([toy_dataset], tmp_path / "m", dataclasses.replace(toy_cfg, epochs=1, steps_per_epoch=2,
                                                                          ce_balance=0.5), progress=False)
    assert seen == [0.5, 0.5]
    seen.clear()
    train_segmentation([toy_dataset], tmp_path / "d", dataclasses.replace(toy_cfg, epochs=2, steps_per_epoch=2,
                       ce_balance=0.8, ce_balance_decay=True), progress=False)
    assert seen == pytest.approx([0.8, 0.6, 0.4, 0.2])


def test_model_folder_and_log(toy_model):
    meta = json.loads((toy_model / "model.json").read_text())
    assert meta["kind"] == "segmentation" and meta["complete"] is True
    assert meta["architecture"]["base_channels"] == 4 and meta["windows"] == ["soft_tissue"]
    assert meta["downsample"] == 1 and len(meta["split"]["val"]) == 1 and len(meta["split"]["train"]) == 3
    assert 1 <= meta["best_epoch"] <= 3 and set(meta["best_val_dice"]) >= {"lung_left", "lung_right"}
    lines = [json.loads(x) for x in (toy_model / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert all(r["time_s"] > 0 and r["val_s"] > 0 for r in lines)  # steps and validation timed apart
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


def _weights(folder):
    """The learnt parameters of a model folder (batch-norm running statistics left out: they move in any
    training step, whatever the learning rate)."""
    sd = torch.load(folder / "weights.pt", weights_only=True)
    return {k: v for k, v in sd.items() if "running" not in k and "num_batches" not in k}


def test_fine_tuning_starts_from_the_given_model(tmp_path, toy_dataset, toy_cfg, toy_model):
    """With a negligible learning rate a fine-tuning ends where its start model was; a training from scratch with
    the same settings does not. The start model is recorded and is part of the checkpoint's identity."""
    cfg = dataclasses.replace(toy_cfg, epochs=1, steps_per_epoch=2, lr=1e-9)
    ft = train_segmentation([toy_dataset], tmp_path / "ft", cfg, val_cases=[], progress=False, init_from=toy_model)
    scratch = train_segmentation([toy_dataset], tmp_path / "scratch", cfg, val_cases=[], progress=False)
    start, tuned, fresh = _weights(toy_model), _weights(ft), _weights(scratch)
    assert start.keys() == tuned.keys()
    for k in start:
        torch.testing.assert_close(tuned[k], start[k], atol=1e-5, rtol=0)
    assert max(float((fresh[k] - start[k]).abs().max()) for k in start) > 0.05
    meta = json.loads((ft / "model.json").read_text())
    assert meta["init_from"] == {"model": str(toy_model),
                                 "config_hash": json.loads((toy_model / "model.json").read_text())["config_hash"]}
    assert "init_from" not in json.loads((scratch / "model.json").read_text())
    # a checkpoint of the fine-tuning is not resumed as a training from scratch (nor the other way round)
    with pytest.raises(ConfigError, match="another config"):
        train_segmentation([toy_dataset], ft, cfg, val_cases=[], progress=False, resume=True)
    with pytest.raises(ConfigError, match="another config"):
        train_segmentation([toy_dataset], scratch, cfg, val_cases=[], progress=False, resume=True,
                           init_from=toy_model)


def test_fine_tuning_refuses_a_model_it_cannot_start_from(tmp_path, toy_dataset, toy_cfg, toy_model):
    import shutil

    cfg = dataclasses.replace(toy_cfg, epochs=1, steps_per_epoch=1)
    with pytest.raises(InputError, match="differs in architecture") as e:
        train_segmentation([toy_dataset], tmp_path / "a", dataclasses.replace(cfg, base_channels=8), val_cases=[],
                           progress=False, init_from=toy_model)
    assert "model.json" in str(e.value) and not (tmp_path / "a" / "model.json").exists()
    with pytest.raises(InputError, match="differs in architecture, position"):
        train_segmentation([toy_dataset], tmp_path / "b", dataclasses.replace(cfg, position=True), val_cases=[],
                           progress=False, init_from=toy_model)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(toy_model, unfinished)
    meta = json.loads((unfinished / "model.json").read_text())
    (unfinished / "model.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(InputError, match="not finished"):
        train_segmentation([toy_dataset], tmp_path / "c", cfg, val_cases=[], progress=False, init_from=unfinished)
    with pytest.raises(InputError, match="does not exist"):
        train_segmentation([toy_dataset], tmp_path / "d", cfg, val_cases=[], progress=False,
                           init_from=tmp_path / "nope")


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


def test_context_is_validated():
    from styleseg.seg.train import SegTrainConfig

    with pytest.raises(ConfigError, match="context"):
        SegTrainConfig(context=5)


def test_validation_split_keeps_each_patient_on_one_side(tmp_path):
    """Re-imaged versions of a patient (as the oracle's dataset holds them: ``patient`` recorded, no provenance)
    must never sit on both sides of the train/validation split: the best-epoch choice would be leaked."""
    from seg_builders import toy_case

    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import Volume
    from styleseg.labels import LabelSchema

    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "oracle", "oracle-like", LabelSchema.default()) as w:
        for p in range(4):
            vol, lab = toy_case(rng, n=2, size=32, shift=p % 3 - 1)
            for version in ("orig", "low-dose", "sharp"):
                img = Volume((vol + rng.normal(0, 20, vol.shape)).astype(np.int16), (1.0, 1.0, 3.0))
                w.add_case(f"P{p}_{version}", img, img.with_array(lab), patient=f"P{p}")
    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=2,
                              epochs=1, steps_per_epoch=1, val_fraction=0.25)
    out = train_segmentation([tmp_path / "oracle"], tmp_path / "m", cfg, progress=False)
    split = json.loads((out / "model.json").read_text())["split"]
    patients = {side: {c.split("_")[0] for c in split[side]} for side in ("train", "val")}
    assert patients["val"] and not patients["train"] & patients["val"]
    assert len(split["val"]) == 3  # one whole patient: its three versions


def test_validation_uses_the_real_case_of_a_patient_only(tmp_path):
    """A dataset as `styleseg augment` and cyclic rounds write it: restyled versions (provenance.style) and
    pseudo-labelled target slices (pseudo_label). model.json's split validates on one real source case, and
    neither its restyled versions nor any pseudo-labelled case reach validation."""
    from seg_builders import toy_case

    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import Volume
    from styleseg.labels import LabelSchema

    rng = np.random.default_rng(1)
    with DatasetWriter(tmp_path / "aug", "aug-like", LabelSchema.default()) as w:
        for p in range(4):
            vol, lab = toy_case(rng, n=2, size=32, shift=p % 3 - 1)
            img = Volume(vol.astype(np.int16), (1.0, 1.0, 3.0))
            w.add_case(f"P{p}", img, img.with_array(lab), patient=f"P{p}")
            for s in range(2):
                gen = img.with_array((vol + rng.normal(0, 30, vol.shape)).astype(np.int16))
                w.add_case(f"P{p}_s{s:02d}", gen, gen.with_array(lab), patient=f"P{p}",
                           provenance={"source_case": f"P{p}", "style": s})
        for z in range(3):
            vol, lab = toy_case(rng, n=1, size=32)
            img = Volume(vol.astype(np.int16), (1.0, 1.0, 3.0))
            w.add_case(f"T_z{z:03d}", img, img.with_array(lab), patient="T", pseudo_label={"confidence": 0.9})
    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=2,
                              epochs=1, steps_per_epoch=1, val_fraction=0.25)
    out = train_segmentation([tmp_path / "aug"], tmp_path / "m", cfg, progress=False)
    split = json.loads((out / "model.json").read_text())["split"]
    assert len(split["val"]) == 1 and split["val"][0] in {"P0", "P1", "P2", "P3"}
    val_patient = split["val"][0]
    assert not any(k.startswith(val_patient) for k in split["train"])
    assert sum(k.startswith("T_") for k in split["train"]) == 3


def test_validation_in_bf16_agrees_with_float32(toy_model, toy_dataset):
    """A bf16 run validates in bf16 and channels-last, as the pipeline predicts with it: the same Dice as float32
    up to bf16's rounding, and the same structures."""
    from styleseg.runs import read_model_folder
    from styleseg.seg.data import load_cases
    from styleseg.seg.inputs import InputSpec
    from styleseg.seg.unet import UNet, UNetSpec
    from styleseg.seg.validate import validation_dice

    meta, state = read_model_folder(toy_model, "segmentation")
    model = UNet(UNetSpec.from_json(meta["architecture"])).to(memory_format=torch.channels_last)
    model.load_state_dict(state)
    cases, schema = load_cases([toy_dataset])
    spec = InputSpec.from_model_json(meta)
    fp32 = validation_dice(model, cases, schema, spec, 4, "cpu")
    bf16 = validation_dice(model, cases, schema, spec, 4, "cpu", amp="bf16")
    assert set(bf16) == set(fp32) and fp32["lung_left"] > 0.5
    assert all(abs(bf16[k] - fp32[k]) < 0.05 for k in fp32)
