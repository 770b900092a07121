"""Segmenting over a Dask cluster (seg/distributed.py): a local cluster of two worker processes writes exactly
the files a single process writes."""

from __future__ import annotations

import numpy as np
import pytest

from styleseg.io.volume import Volume, read_nifti, write_nifti
from styleseg.seg.segment import segment

pytest.importorskip("dask.distributed", reason="the Dask executor is the optional extra styleseg[dask]")


def test_two_dask_workers_write_what_one_process_writes(tmp_path, toy_model):
    from seg_builders import toy_case

    from styleseg.seg.distributed import segment_dask

    ins = []
    for i in range(5):
        arr, _ = toy_case(np.random.default_rng(i), n=2 + i % 2, size=30)
        ins.append(write_nifti(Volume(arr, (1.0, 1.0, 3.0)), tmp_path / "in" / f"c{i}.nii.gz"))
    one = segment(ins, toy_model, tmp_path / "single")
    rep = segment_dask(ins, toy_model, tmp_path / "dask", parts=3, workers=2)
    assert rep.done == one.done == [f"c{i}" for i in range(5)] and not rep.failed
    assert rep.slices == one.slices == 12
    for cid in one.done:
        a, b = read_nifti(tmp_path / "single" / f"{cid}.nii.gz"), read_nifti(tmp_path / "dask" / f"{cid}.nii.gz")
        assert a.same_grid(b)
        np.testing.assert_array_equal(a.array, b.array)
    assert sorted(p.name for p in (tmp_path / "dask").glob("segment_report.part*.json")) == [
        f"segment_report.part{i}.json" for i in range(3)]
    again = segment_dask(ins, toy_model, tmp_path / "dask", parts=2, workers=2, continue_=True)
    assert again.done == [] and again.skipped == one.done  # resumable: nothing is redone
