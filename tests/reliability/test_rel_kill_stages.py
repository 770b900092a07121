"""SIGKILL `styleseg augment` and `styleseg segment` mid-run, run them again: the outputs are complete and identical
to an uninterrupted run, and no `.partial` / `.tmp` leftovers remain (`import`: test_rel_kill.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import styleseg

SRC = str(Path(styleseg.__file__).resolve().parents[1])


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", "from styleseg.cli import app; app()", *args], env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def _kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 240) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from styleseg.cli import app; app()", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def source_and_models(tmp_path_factory):
    """A labelled source of 6 noisy 24-slice cases, a tiny generator for it, and a tiny U-Net."""
    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import Volume
    from styleseg.labels import LabelSchema
    from styleseg.seg.train import SegTrainConfig, train_segmentation
    from styleseg.style.train import GeneratorConfig, fit_generators

    root = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:160, :160]
    lab = np.zeros((160, 160), np.uint8)
    lab[(yy - 80) ** 2 / 60**2 + (xx - 80) ** 2 / 70**2 < 1] = 6
    lab[(yy - 70) ** 2 + (xx - 50) ** 2 < 20**2] = 2
    lab[(yy - 70) ** 2 + (xx - 110) ** 2 < 20**2] = 1
    base = np.where(lab == 6, 40.0, np.where(lab > 0, -850.0, -1000.0))
    with DatasetWriter(root / "source", "source", LabelSchema.default()) as w:
        for i in range(6):
            hu = np.stack([base + rng.normal(0, 30, base.shape) for _ in range(24)]).astype(np.int16)
            img = Volume(hu, (1.0, 1.0, 3.0))
            w.add_case(f"c{i}", img, img.with_array(np.stack([lab] * 24)))
    cfg = GeneratorConfig.from_flat(crop=32, steps=2, batch=1, base=4, n_res=1, nps_weight=0.0)
    style = base + rng.normal(0, 60, base.shape)
    fit_generators(np.stack([base] * 2).astype(np.int16), np.stack([lab] * 2), [style], [lab],
                   [{"index": 0, "case_id": "s", "slice": 0, "tags": {}}], root / "gens", cfg, LabelSchema.default(),
                   progress=False)
    seg = SegTrainConfig(base_channels=4, depth=2, crop=32, batch_size=2, epochs=1, steps_per_epoch=2,
                         val_fraction=0.0)
    train_segmentation([root / "source"], root / "model", seg, progress=False, val_cases=[])
    return root


def test_kill_augment_then_rerun_gives_the_same_dataset(source_and_models, tmp_path):
    root = source_and_models
    args = ["augment", "--source", str(root / "source"), "--generators", str(root / "gens"), "--seed", "3"]
    r = _run([*args, "--out", str(tmp_path / "ref")])
    assert r.returncode == 0, r.stderr
    work = tmp_path / "work"
    work.mkdir()
    _kill_when([*args, "--out", str(work / "aug")],
               lambda: any(len(list((p / "imagesTr").glob("*"))) >= 3 for p in work.glob(".aug.*.partial")))
    assert not (work / "aug").exists() and list(work.glob(".aug.*"))  # only its temporary was left
    r = _run([*args, "--out", str(work / "aug")])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["aug"]  # the dead run's temporary is gone
    assert _files(work / "aug") == _files(tmp_path / "ref")
    for p in _files(tmp_path / "ref"):
        if p.endswith(".nii.gz"):
            assert (work / "aug" / p).read_bytes() == (tmp_path / "ref" / p).read_bytes(), p


def test_kill_segment_then_continue_gives_the_same_labels(source_and_models, tmp_path):
    root = source_and_models
    args = ["segment", str(root / "source"), "--model", str(root / "model")]
    r = _run([*args, "--out", str(tmp_path / "ref")])
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    _kill_when([*args, "--out", str(out)], lambda: len(list(out.glob("c*.nii.gz"))) >= 2)
    done_before = {p.name for p in out.glob("c*.nii.gz")}
    assert 2 <= len(done_before) < 6
    r = _run([*args, "--out", str(out), "--continue"])
    assert r.returncode == 0, r.stderr
    assert _files(out) == _files(tmp_path / "ref")  # no temporary of the killed case is left
    for p in _files(tmp_path / "ref"):
        if p.endswith(".nii.gz"):
            assert (out / p).read_bytes() == (tmp_path / "ref" / p).read_bytes(), p
