"""Stage skipping: same config -> skipped; changed config or upstream -> re-run; interrupted -> re-run."""

from __future__ import annotations

from pathlib import Path

import pytest

from styleseg.pipeline.stages import StageRunner


def _writer(path: Path, calls: list[str], fail: bool = False):
    def fn() -> None:
        calls.append(path.name)
        if fail:
            raise KeyboardInterrupt  # as if killed mid-stage
        path.write_text("ok")
    return fn


def test_same_config_is_skipped_and_changed_config_reruns(tmp_path: Path) -> None:
    calls: list[str] = []
    out = tmp_path / "a.txt"
    r1 = StageRunner(tmp_path).run("a", {"x": 1}, [], [out], _writer(out, calls))
    r2 = StageRunner(tmp_path).run("a", {"x": 1}, [], [out], _writer(out, calls))
    assert not r1.skipped and r2.skipped and calls == ["a.txt"]
    r3 = StageRunner(tmp_path).run("a", {"x": 2}, [], [out], _writer(out, calls))
    assert not r3.skipped and calls == ["a.txt", "a.txt"]
    # an upstream change re-runs the stage too
    r4 = StageRunner(tmp_path).run("a", {"x": 2}, ["upstream-changed"], [out], _writer(out, calls))
    assert not r4.skipped and len(calls) == 3


def test_interrupted_stage_leaves_no_marker_and_reruns(tmp_path: Path) -> None:
    calls: list[str] = []
    out = tmp_path / "b.txt"
    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path).run("b", {}, [], [out], _writer(out, calls, fail=True))
    assert not (tmp_path / "stages" / "b.json").exists()
    r = StageRunner(tmp_path).run("b", {}, [], [out], _writer(out, calls))
    assert not r.skipped and out.read_text() == "ok" and len(calls) == 2


def test_missing_output_reruns_even_with_marker(tmp_path: Path) -> None:
    calls: list[str] = []
    out = tmp_path / "c.txt"
    StageRunner(tmp_path).run("c", {}, [], [out], _writer(out, calls))
    out.unlink()
    r = StageRunner(tmp_path).run("c", {}, [], [out], _writer(out, calls))
    assert not r.skipped and out.exists()


def test_stage_that_does_not_write_its_outputs_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="did not produce"):
        StageRunner(tmp_path).run("d", {}, [], [tmp_path / "never"], lambda: None)
