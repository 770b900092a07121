"""Checkpoints and model folders holding pickled code: refused with styleseg's own advice, never torch's."""

from __future__ import annotations

import json

import pytest
import torch

from styleseg.errors import InputError
from styleseg.runs import MODEL_FORMAT_VERSION, load_checkpoint, read_model_folder


class Payload:
    """Stands in for any object whose unpickling would run code."""


def test_pickled_checkpoint_refused_with_our_advice(tmp_path):
    p = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "obj": Payload()}, p)
    with pytest.raises(InputError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert e.value.path == p and "weights_only" not in msg and "trusted source" not in msg
    assert "pickled Python objects" in e.value.problem and "test_rel_runs.Payload" in e.value.problem
    assert "styleseg never loads" in e.value.problem and "re-create" in (e.value.fix or "")
    assert "\n" not in msg


def test_pickled_weights_refused_with_our_advice(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"kind": "seg", "format_version": MODEL_FORMAT_VERSION}))
    torch.save({"w": torch.zeros(1), "x": Payload()}, folder / "weights.pt")
    with pytest.raises(InputError) as e:
        read_model_folder(folder, "seg")
    msg = str(e.value)
    assert e.value.path == folder / "weights.pt" and "weights_only" not in msg and "\n" not in msg
    assert "pickled Python objects" in msg and "train-seg" in (e.value.fix or "")


def test_truncated_checkpoint_is_one_line(tmp_path):
    p = tmp_path / "checkpoint.pt"
    torch.save({"w": torch.zeros(1000)}, p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(InputError, match="cannot load checkpoint") as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value) and "corrupt or truncated" in str(e.value)
