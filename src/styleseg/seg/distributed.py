"""Segment a collection over the workers of a Dask cluster (optional extra ``styleseg[dask]``).

The collection is cut into ``parts`` shards exactly as ``--shard i/n`` cuts it (cases sorted by id, case
``k`` in part ``k % parts``); each part is one Dask task running :func:`styleseg.seg.segment.segment` on a
worker, which loads the model once and writes its cases atomically into the shared output folder. So the
outputs are the files a single process would write (same model, same inputs, same code path), a task that
dies is redone from scratch by Dask, and ``continue_`` skips what is done. ``scheduler``: the address of a
running cluster (``tcp://host:8786``; start one with ``dask scheduler`` and ``dask worker`` on each node, or
``dask_jobqueue.SLURMCluster``); None starts a local cluster of ``workers`` processes with one thread each.
The output folder must be visible to every worker (a shared file system).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from styleseg.errors import ConfigError
from styleseg.seg.segment import SegmentReport

log = logging.getLogger("styleseg.seg.distributed")


def _part(inputs: Sequence[str], model: str, out: str, part: int, parts: int, options: dict[str, Any],
          threads: int) -> dict[str, Any]:
    """One Dask task: segment part ``part`` of ``parts`` (runs on a worker)."""
    import torch

    from styleseg.seg.segment import segment

    torch.set_num_threads(threads)
    rep = segment([Path(p) for p in inputs], Path(model), Path(out), part_id=part, num_parts=parts,
                  progress=False, **options)
    return rep.to_json()


def segment_dask(inputs: Sequence[Path], model: Path, out: Path, parts: int = 0, scheduler: str | None = None,
                 workers: int = 2, threads: int = 1, **options: Any) -> SegmentReport:
    """Segment ``inputs`` with ``model`` into ``out`` as ``parts`` Dask tasks (0: 4 per worker); ``options`` are
    :func:`~styleseg.seg.segment.segment`'s (``continue_``, ``dicom_seg``, ``resample``, ...). Returns the merged
    report of every part."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as e:
        raise ConfigError("the Dask executor needs the optional extra: pip install 'styleseg[dask]' "
                          "(dask[distributed])") from e
    if workers < 1 or parts < 0:
        raise ConfigError(f"dask: workers ({workers}) must be >= 1 and parts ({parts}) >= 0")
    from rich.progress import Progress

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                   dashboard_address=None)
    merged = SegmentReport(out)
    try:
        with Client(scheduler or cluster) as client:
            n = parts or 4 * max(1, len(client.scheduler_info().get("workers", {})) or workers)
            futures = [client.submit(_part, [str(p) for p in inputs], str(model), str(out), i, n, dict(options),
                                     threads, pure=False) for i in range(n)]
            with Progress(transient=True) as bar:
                task = bar.add_task(f"segmenting on {len(client.scheduler_info().get('workers', {}))} Dask "
                                    "worker(s)", total=n)
                for fut in as_completed(futures):
                    rep = fut.result()
                    merged.done += rep["done"]
                    merged.skipped += rep["skipped"]
                    merged.failed.update(rep["failed"])
                    merged.slices += rep["slices"]
                    merged.seconds += rep["seconds"]
                    bar.advance(task)
    finally:
        if cluster is not None:
            cluster.close()
    merged.done.sort()
    merged.skipped.sort()
    return merged
