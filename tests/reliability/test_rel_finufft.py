"""FINUFFT threads follow OMP_NUM_THREADS / torch, and the simulator prints no warning per slice."""

from __future__ import annotations

import numpy as np

from styleseg.sim import projector, scanner


def test_threads_follow_omp_num_threads(monkeypatch):
    monkeypatch.setattr(projector.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert projector._threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(projector, "_torch_threads", lambda: None)
    assert projector._threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "not-a-number")
    assert projector._threads() == 8  # ignored: the affinity mask (capped at 8) decides


def test_threads_follow_torch(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(projector.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert projector._threads() == 2
    finally:
        torch.set_num_threads(old)


def test_reimage_passes_the_thread_count_and_warns_nothing(monkeypatch, capfd):
    import finufft

    calls = []
    for name in ("nufft2d1", "nufft2d2"):
        real = getattr(finufft, name)

        def spy(*a, _real=real, **k):
            calls.append(k.get("nthreads"))
            return _real(*a, **k)

        monkeypatch.setattr(finufft, name, spy)
    # more threads than physical cores is what made FINUFFT warn on every plan
    monkeypatch.setattr(projector.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    monkeypatch.setattr(projector, "_torch_threads", lambda: None)
    img = np.full((48, 48), -1000.0)
    img[12:36, 12:36] = 40.0
    capfd.readouterr()
    for seed in range(2):
        out = scanner.reimage(img, 1.0, "low-dose-sharp", seed)
    err = capfd.readouterr().err
    assert out.shape == (48, 48) and np.isfinite(out).all()
    assert calls and set(calls) == {8}
    assert "warning" not in err.lower(), err
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    calls.clear()
    scanner.reimage(img, 1.0, "low-dose-sharp", 0)
    assert set(calls) == {1}
