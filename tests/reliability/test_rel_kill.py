"""SIGKILL `styleseg import` mid-run, run it again: the output is complete, identical to an uninterrupted
import, and no `.partial` / `.tmp` leftovers remain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rel_helpers import body_ct, listing, write_ct_nifti

import styleseg

SRC = str(Path(styleseg.__file__).resolve().parents[1])


def _cmd(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "from styleseg.cli import app; app()", "import", str(src), "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def test_kill_then_rerun_gives_the_same_dataset(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i in range(6):  # noisy volumes compress slowly: the import takes long enough to be killed mid-way
        hu = body_ct(nz=24, size=192, seed=i) + rng.integers(-200, 200, (24, 192, 192)).astype(np.int16)
        write_ct_nifti(src / f"case{i}_ct.nii.gz", hu, spacing=(2.0, 2.0, 2.0), label=(i % 2 == 0))
    ref = tmp_path / "ref" / "ds"
    r = subprocess.run(_cmd(src, ref), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    work = tmp_path / "work"
    work.mkdir()
    out = work / "ds"
    proc = subprocess.Popen(_cmd(src, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    partial: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in work.glob(".ds.*.partial") if len(list((p / "imagesTr").glob("case*"))) >= 2]
        if partial:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"import finished before it could be killed: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and partial and partial[0].exists()  # a killed import leaves only its temporary

    r = subprocess.run(_cmd(src, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert listing(work) == [f"ds/{p}" if p else "ds" for p in [""] + listing(out)]  # nothing beside ds
    assert not [p for p in listing(out) if ".partial" in p or ".tmp" in p or p.split("/")[-1].startswith(".")]
    assert listing(out) == listing(ref)
    assert (out / "dataset.json").read_text() == (ref / "dataset.json").read_text().replace(str(ref), str(out))
    for p in listing(ref):
        if p.endswith(".nii.gz"):
            assert (out / p).read_bytes() == (ref / p).read_bytes(), p
