"""Environment errors: a read-only or full output disk, an output path under a file.

Each is one line naming the output and the errno text, exit 2, and nothing is left half-written: no
output folder, no temporaries, an existing output untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rel_helpers import body_ct, expect_error, listing, write_ct_nifti

from styleseg.errors import InputError
from styleseg.io.atomic import write_json
from styleseg.io.volume import Volume, write_nifti


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real small (or read-only) file system at ``where``; skips where mounting is not allowed."""
    where.mkdir()
    opts = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@contextlib.contextmanager
def _read_only(where: Path) -> Iterator[Path]:
    """A folder this process cannot write: chmod for a normal user, a read-only tmpfs for root (which
    ignores permissions)."""
    if os.geteuid() != 0:
        where.mkdir()
        where.chmod(0o555)
        try:
            yield where
        finally:
            where.chmod(0o755)
    else:
        with _tmpfs(where, "1m", read_only=True) as w:
            yield w


def test_output_under_a_regular_file(tmp_path):
    write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz")
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "ds"
    expect_error(["import", str(tmp_path / "src"), "--out", str(out)], input="--out below a regular file",
                 contains=[f"{out}: cannot write: {tmp_path / 'file'} is a file, not a folder", "fix:"],
                 left="nothing written", tmp=tmp_path)
    assert (tmp_path / "file").read_text() == "x"


def test_read_only_output_folder(tmp_path):
    write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz")
    with _read_only(tmp_path / "ro") as ro:
        out = ro / "ds"
        line = expect_error(["import", str(tmp_path / "src"), "--out", str(out)], input="read-only --out folder",
                            contains=[str(out), "fix:", "another --out"], left="nothing written", tmp=tmp_path)
        assert "Read-only file system" in line or "Permission denied" in line
        assert listing(ro) == []


def test_full_disk_real(tmp_path):
    """A 256 kB file system: the NIfTI writer (C code) fails half-way; nothing may look complete."""
    big = np.random.default_rng(0).integers(-1000, 1000, (32, 128, 128)).astype(np.int16)  # ~0.7 MB gzipped
    write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz", big)
    with _tmpfs(tmp_path / "full", "256k") as full:
        with pytest.raises(InputError, match="No space left on device|incomplete") as e:
            write_nifti(Volume(big), full / "v.nii.gz")
        assert e.value.path == full / "v.nii.gz" and "free disk space" in (e.value.fix or "")
        assert listing(full) == []
        out = full / "ds"
        expect_error(["import", str(tmp_path / "src"), "--out", str(out)], input="output disk full",
                     contains=[str(full), "free disk space"], left="nothing written (no .partial)", tmp=tmp_path)
        assert listing(full) == []


def test_full_disk_simulated_json(tmp_path, monkeypatch):
    """ENOSPC from the write itself (wherever the disk fills up): the target stays as it was."""
    target = tmp_path / "out" / "metrics.json"
    write_json(target, {"old": 1})

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(InputError) as e:
        write_json(target, {"new": 2})
    assert e.value.path == target and e.value.problem == "cannot write: No space left on device"
    assert e.value.fix == "free disk space or choose another --out"
    monkeypatch.undo()
    assert target.read_text() == '{\n  "old": 1\n}\n' and listing(tmp_path / "out") == ["metrics.json"]


def test_full_disk_during_import_keeps_nothing(tmp_path, monkeypatch):
    write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz", label=True)
    write_ct_nifti(tmp_path / "src" / "b_ct.nii.gz")

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)  # dataset.json is the last file a dataset gets
    expect_error(["import", str(tmp_path / "src"), "--out", str(tmp_path / "ds")],
                 input="disk full while writing dataset.json",
                 contains=[f"{tmp_path / 'ds' / 'dataset.json'}: cannot write: No space left on device",
                           "free disk space"],
                 left="nothing at --out, no .partial", tmp=tmp_path)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds*"))


def test_2d_label_for_a_3d_image(tmp_path):
    import SimpleITK as sitk

    src = write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz", body_ct())
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64), np.uint8)), str(src.with_name("a_labels.nii.gz")))
    expect_error(["import", str(tmp_path / "src"), "--out", str(tmp_path / "ds")],
                 input="2D label NIfTI beside a 3D image",
                 contains=[str(src.with_name("a_labels.nii.gz")), "2D image"], left="nothing at --out", tmp=tmp_path)


def test_existing_output_is_kept(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    expect_error(["make-benchmark", "--out", str(out)], input="--out that already exists",
                 contains=[f"error: {out}: output already exists (fix: choose another --out or remove it first)"],
                 left="the existing folder, unchanged", tmp=tmp_path)
    assert listing(tmp_path) == ["bench", "bench/mine.txt"] and (out / "mine.txt").read_text() == "keep"


def test_an_output_inside_an_input_folder_is_refused_before_any_work(tmp_path):
    """`--out` the input dataset itself, or a folder inside it: one line, exit 2, and nothing written there."""
    from typer.testing import CliRunner

    from styleseg.cli import app
    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import Volume
    from styleseg.labels import LabelSchema

    ds = tmp_path / "ds"
    with DatasetWriter(ds, "ds", LabelSchema.default()) as w:
        w.add_case("a", Volume(np.full((2, 32, 32), -1000, np.int16), (1.0, 1.0, 3.0)))
    before = sorted(p.name for p in ds.rglob("*"))
    for args in (["simulate", str(ds), "--protocol", "low-dose-sharp", "--out", str(ds / "sim")],
                 ["import", str(ds), "--out", str(ds / "imagesTr" / "again")]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "inside the input" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in ds.rglob("*")) == before
