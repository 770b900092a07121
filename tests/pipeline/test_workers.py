"""The training worker pool of `styleseg run --jobs n`: no worker outlives the run that started it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from styleseg.pipeline.arm_stages import stop_pool, training_pool


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts as exited)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" in status.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_gone(pid: int, seconds: float = 30.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if _gone(pid):
            return True
        time.sleep(0.2)
    return _gone(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_a_killed_run_takes_its_training_workers_with_it(tmp_path):
    """The parent is SIGKILLed (no cleanup can run) while its worker sleeps in a job: the worker still exits.
    (The worker's stdout is the pipe, so a surviving worker would also hold ``subprocess.run`` to its timeout.)"""
    script = (
        "import os, signal, sys, time\n"
        "from styleseg.pipeline.arm_stages import training_pool\n"
        "pool = training_pool(1)\n"
        "pool.submit(time.sleep, 0).result()\n"
        "fut = pool.submit(time.sleep, 120)\n"
        "while not fut.running(): time.sleep(0.05)\n"
        "print(*pool._processes, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 1
    assert _wait_gone(pids[0]), f"worker {pids[0]} still running after its parent was killed"


def test_stopping_on_an_error_terminates_running_jobs_instead_of_waiting():
    pool = training_pool(1)
    fut = pool.submit(time.sleep, 120)
    while not fut.running():
        time.sleep(0.05)
    (pid,) = list(pool._processes)
    stop_pool(pool, wait=False)
    assert _wait_gone(pid), "the worker was left running its job"
