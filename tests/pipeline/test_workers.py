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


class _Job:
    def __init__(self, done: bool) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


def test_own_threads_follow_the_busy_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside busy workers this process keeps the CPUs they leave (at least one thread); with none busy, all of
    its threads; outside the context, what it had before."""
    import torch

    from styleseg.pipeline import arm_stages
    from styleseg.pipeline.arm_stages import ArmStages

    monkeypatch.setattr(arm_stages, "usable_cpus", lambda: 8)
    before = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        stages = ArmStages.__new__(ArmStages)
        stages.cfg, stages.pool, stages.worker_threads = type("C", (), {"jobs": 3})(), object(), 2
        stages.pending = []
        with stages.threads_beside_workers():
            assert torch.get_num_threads() == 8  # nothing queued yet
            stages.pending = [("s", None, [], [], _Job(False)), ("t", None, [], [], _Job(True))]
            stages.share_cpus()
            assert torch.get_num_threads() == 6  # one worker busy, two threads
            stages.pending += [("u", None, [], [], _Job(False)) for _ in range(4)]
            stages.share_cpus()
            assert torch.get_num_threads() == 2  # three workers busy (jobs = 3), two threads each
            stages.worker_threads = 4
            stages.share_cpus()
            assert torch.get_num_threads() == 1  # at least one
        assert torch.get_num_threads() == 8
        stages.share_cpus()  # outside the context: leaves the threads alone
        assert torch.get_num_threads() == 8
    finally:
        torch.set_num_threads(before)


def test_a_fine_tuning_is_queued_with_its_data_once_its_starting_model_is_done() -> None:
    """submit_ready queues, for a seed whose data is built, the arms that train on it and the fine-tunings whose
    starting model's stage is recorded (a continued run); a fine-tuning whose starting model is still training waits
    (finish_trainings queues it), and no arm is queued twice."""
    from styleseg.pipeline.arm_stages import ArmStages
    from styleseg.pipeline.arms import ARMS

    stages = ArmStages.__new__(ArmStages)
    stages.pool, stages.seeds, stages.skipped_arms, stages.submitted = object(), (0, 1), {}, set()
    stages.datasets = {("source", 0): "s", ("aug_separate", 0): "a", ("source", 1): "s", ("aug_separate", 1): "a"}
    stages.hashes = {"train_reference": "h"}  # seed 0's reference is done, seed 1's is not
    queued: list[tuple[str, int]] = []
    stages.stage_train_arm = lambda arm, seed: queued.append((arm.name, seed))
    stages.share_cpus = lambda: None
    arms = [ARMS[a] for a in ("reference", "styleseg_ref", "styleseg_ft_ref", "cyclic_ft_ref")]
    stages.submit_ready(arms, 0)
    assert queued == [("reference", 0), ("styleseg_ref", 0), ("styleseg_ft_ref", 0)]  # cyclic rounds come later
    stages.submit_ready(arms, 1)
    assert queued[3:] == [("reference", 1), ("styleseg_ref", 1)]  # seed 1's reference not done: its ft waits
    stages.submit_ready(arms, 0)
    assert len(queued) == 5
