"""Atomic writers: leftovers of a killed writer are cleaned by the next run; outputs get normal permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from rel_helpers import listing, write_ct_nifti

from styleseg.io.atomic import HOST_TAG, atomic_dir, atomic_path, write_json
from styleseg.io.dataset import DatasetWriter
from styleseg.io.volume import Volume, write_nifti
from styleseg.labels import LabelSchema


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _temporaries(folder, name):
    return [p for p in listing(folder) if p.startswith(f".{name}.")]


def test_writer_temporaries_are_recognisable(tmp_path):
    seen = []
    with atomic_path(tmp_path / "a.nii.gz") as tmp:
        seen.append(tmp.name)
    with atomic_dir(tmp_path / "ds") as tmp:
        seen.append(tmp.name)
    tag = f"{HOST_TAG}-{os.getpid()}-"
    assert seen[0].startswith(f".a.nii.gz.{tag}") and seen[0].endswith(".tmp.nii.gz")
    assert seen[1].startswith(f".ds.{tag}") and seen[1].endswith(".partial")


def test_stale_partial_of_a_dead_writer_is_removed(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".ds.{HOST_TAG}-{dead}-abcd1234.partial"
    (stale / "imagesTr").mkdir(parents=True)
    (stale / "imagesTr" / "x_0000.nii.gz").write_bytes(b"\0" * 1000)
    busy = tmp_path / f".ds.{HOST_TAG}-{alive}-abcd1234.partial"  # another writer, still running
    busy.mkdir()
    other = tmp_path / f".other.{HOST_TAG}-{dead}-abcd1234.partial"  # another target: its own writer cleans it
    other.mkdir()
    remote = tmp_path / f".ds.ffffff-{dead}-abcd1234.partial"  # another host (shared disk): pid means nothing here
    remote.mkdir()
    with atomic_dir(tmp_path / "ds") as tmp:
        (tmp / "f").write_text("new")
    assert listing(tmp_path) == sorted([busy.name, other.name, remote.name, "ds", "ds/f"])


def test_stale_tmp_file_of_a_dead_writer_is_removed(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".a.nii.gz.{HOST_TAG}-{dead}-0badf00d.tmp.nii.gz"
    stale.write_bytes(b"\0" * 100)
    unrelated = tmp_path / ".a.nii.gz.notes"  # not a temporary of ours
    unrelated.write_text("keep")
    write_nifti(Volume(np.zeros((1, 4, 4), np.int16)), tmp_path / "a.nii.gz")
    assert listing(tmp_path) == sorted(["a.nii.gz", unrelated.name])


def test_interrupted_swap_restores_the_previous_output(tmp_path):
    """Killed between moving the old output aside and moving the new one in: the old one comes back."""
    dead = _dead_pid()
    old = tmp_path / f".ds.{HOST_TAG}-{dead}-12345678.old"
    old.mkdir()
    (old / "dataset.json").write_text("{}")
    (tmp_path / f".ds.{HOST_TAG}-{dead}-87654321.partial").mkdir()
    with pytest.raises(FileExistsError):
        with atomic_dir(tmp_path / "ds"):
            pass
    assert listing(tmp_path) == ["ds", "ds/dataset.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_get_the_users_normal_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        write_nifti(Volume(np.zeros((1, 4, 4), np.int16)), tmp_path / "v.nii.gz")
        with DatasetWriter(tmp_path / "ds", "ds", LabelSchema.default()) as w:
            w.add_case("a", Volume(np.zeros((1, 4, 4), np.int16)))
    finally:
        os.umask(old)

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    assert mode(tmp_path / "m.json") == 0o666 & ~umask
    assert mode(tmp_path / "v.nii.gz") == 0o666 & ~umask
    assert mode(tmp_path / "ds") == 0o777 & ~umask
    assert mode(tmp_path / "ds" / "imagesTr") == 0o777 & ~umask
    assert mode(tmp_path / "ds" / "dataset.json") == 0o666 & ~umask
    assert mode(tmp_path / "ds" / "imagesTr" / "a_0000.nii.gz") == 0o666 & ~umask


def test_import_output_is_readable_by_the_group(tmp_path):
    write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz")
    from styleseg.io.importer import import_sources

    old = os.umask(0o022)
    try:
        import_sources([tmp_path / "src"], tmp_path / "ds")
    finally:
        os.umask(old)
    modes = {p: stat.S_IMODE(os.stat(tmp_path / "ds" / p).st_mode) for p in listing(tmp_path / "ds")}
    assert modes == {"dataset.json": 0o644, "imagesTr": 0o755, "imagesTr/a_0000.nii.gz": 0o644}
