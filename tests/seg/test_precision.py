"""Autocast precision by hardware: ``amp = "auto"`` is bf16 only where the device computes it natively."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

import styleseg.trainer as trainer
from styleseg.config import from_dict
from styleseg.errors import ConfigError
from styleseg.trainer import fast_bf16, resolve_amp


def test_fast_bf16_asks_an_x86_cpu_for_its_bf16_instructions(monkeypatch):
    """On x86 only AVX512-BF16 or AMX count: oneDNN's "bf16 supported" is also true where it emulates bf16 on
    plain AVX-512 (Ice Lake: a training step 3.7x slower than float32). Elsewhere oneDNN's answer is taken."""
    import platform

    assert fast_bf16("meta") is False
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for avx512_bf16, amx, native in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert fast_bf16("cpu") is native
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert fast_bf16("cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_without_torch_s_probes_the_cpu_flags_decide(monkeypatch, tmp_path):
    from pathlib import Path

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    real_read = Path.read_text
    for flags, native in (("fpu avx512f avx512bw avx512_vnni", False), ("fpu avx512f avx512_bf16", True),
                          ("fpu amx_bf16 amx_tile", True)):
        monkeypatch.setattr(Path, "read_text", lambda self, *a, f=flags, **k: f"flags\t\t: {f}\n"
                            if str(self) == "/proc/cpuinfo" else real_read(self, *a, **k))
        assert trainer.x86_native_bf16() is native


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "none")])
def test_auto_is_bf16_only_on_native_hardware(monkeypatch, native, expected):
    monkeypatch.setattr(trainer, "fast_bf16", lambda device: native)
    assert resolve_amp("auto", "cpu") == expected
    assert resolve_amp("none", "cpu") == "none" and resolve_amp("fp16", "cpu") == "fp16"


def test_explicit_bf16_on_emulating_hardware_is_kept_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(trainer, "fast_bf16", lambda device: False)
    monkeypatch.setattr(trainer, "_warned_bf16", set())
    with caplog.at_level(logging.WARNING, logger="styleseg.trainer"):
        assert resolve_amp("bf16", "cpu") == "bf16"
        assert resolve_amp("bf16", "cpu") == "bf16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'train_seg.amp = "auto"' in warnings[0] and "emulated" in warnings[0]


@pytest.mark.parametrize("native", [True, False])
def test_training_records_the_precision_it_ran(monkeypatch, tmp_path, toy_dataset, toy_cfg, native):
    from styleseg.seg.predict import Predictor
    from styleseg.seg.train import SegTrainConfig, train_segmentation

    monkeypatch.setattr(trainer, "fast_bf16", lambda device: native)
    cfg = dataclasses.replace(toy_cfg, amp="auto", epochs=1, steps_per_epoch=2)
    out = train_segmentation([toy_dataset], tmp_path / "m", cfg, progress=False)
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["amp"] == "auto" and meta["amp"] == ("bf16" if native else "none")
    assert Predictor(out, dtype="auto").dtype == ("bfloat16" if native else "float32")
    assert Predictor(out, dtype="float32").dtype == "float32"
    with pytest.raises(ConfigError, match="'auto'"):
        from_dict(SegTrainConfig, {"amp": "bf32"}, "train_seg")
