"""DDP through torchrun with 2 CPU processes on gloo, at toy size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tmp_path, toy_dataset):
    out = tmp_path / "ddp_model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(Path(__file__).with_name("ddp_worker.py")), str(toy_dataset), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / "model.json").read_text())
    ddp = meta["ddp"]
    assert ddp["world_size"] == 2
    h = ddp["final_weight_hash_per_rank"]
    assert len(h) == 2 and h[0] == h[1]  # both ranks ended with identical weights (and BN buffers)
    assert meta["complete"] and meta["steps"] == 6
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(x["loss"] > 0 for x in log)  # only rank 0 wrote the log
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["counters"]["global_step"] == 6
