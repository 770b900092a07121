"""Label-free QC of a whole segmented collection: one :func:`styleseg.eval.qc.qc_case` per case, the table, the
thumbnails of the flagged cases (the job's ``qc`` stage; docs/qc.md explains every column and flag).

Writes into ``out``::

    qc.csv              one row per case, worst first (``write_qc_csv``)
    qc.json             {"records": [...worst first...], "failed": {case: reason}, "thumbnails": {case: png}}
    thumbnails/<case>.png   the flagged slice of the ``max_thumbnails`` worst flagged cases

A case whose prediction is missing (it failed to segment) is listed under ``failed``, not silently dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from styleseg.errors import InputError
from styleseg.eval.qc import QCRecord, qc_case, qc_json, qc_thumbnail, review_order, write_qc_csv
from styleseg.io.atomic import write_json
from styleseg.io.dataset import Dataset
from styleseg.io.volume import read_nifti

log = logging.getLogger("styleseg.eval.qc_collection")


def qc_collection(dataset: Path, pred_dir: Path, out: Path, other_dir: Path | None = None,
                  styles: Mapping[str, str] | None = None, max_thumbnails: int = 12) -> list[QCRecord]:
    """QC every case of ``dataset`` from its prediction in ``pred_dir`` (``<case>.nii.gz``); ``other_dir``: a
    second model's predictions (agreement); ``styles``: each case's nearest style. Returns the records."""
    from rich.progress import Progress

    ds = Dataset(dataset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[QCRecord] = []
    failed: dict[str, str] = {}
    with Progress(transient=True) as bar:
        task = bar.add_task("quality control", total=len(ds.cases))
        for rec in ds.cases:
            cid = rec.case_id
            try:
                pred = read_nifti(Path(pred_dir) / f"{cid}.nii.gz")
                other = None
                if other_dir is not None and (Path(other_dir) / f"{cid}.nii.gz").exists():
                    other = read_nifti(Path(other_dir) / f"{cid}.nii.gz")
                records.append(qc_case(cid, pred, ds.schema, other=other, style=(styles or {}).get(cid)))
            except InputError as e:
                failed[cid] = str(e)
                log.warning("QC of %s skipped: %s", cid, e)
            bar.advance(task)
    write_qc_csv(records, out / "qc.csv", ds.schema)
    thumbs = _thumbnails(ds, records, Path(pred_dir), other_dir, out / "thumbnails", max_thumbnails)
    write_json(out / "qc.json", {"records": qc_json(records), "failed": failed, "thumbnails": thumbs,
                                 "n_cases": len(ds.cases), "n_flagged": sum(1 for r in records if r.flags)})
    return records


def _thumbnails(ds: Dataset, records: list[QCRecord], pred_dir: Path, other_dir: Path | None, folder: Path,
                limit: int) -> dict[str, str]:
    """PNG of the flagged slice of the ``limit`` worst flagged cases; {case: path relative to the QC folder}."""
    made: dict[str, Any] = {}
    for r in [r for r in review_order(records) if r.flags][:limit]:
        folder.mkdir(parents=True, exist_ok=True)
        other = None
        if other_dir is not None and (other_dir / f"{r.case}.nii.gz").exists():
            other = read_nifti(other_dir / f"{r.case}.nii.gz")
        png = qc_thumbnail(ds.load_image(r.case), read_nifti(pred_dir / f"{r.case}.nii.gz"), r,
                           folder / f"{r.case}.png", ds.schema, other=other)
        made[r.case] = str(png.relative_to(folder.parent))
    return made
