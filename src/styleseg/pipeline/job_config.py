"""The ``[job]`` section of an experiment: segmenting an unannotated collection (docs/job.md).

``styleseg run`` takes the **job** path when ``mode = "job"``, or, with ``mode = "auto"`` (the default), when the
target carries no labels at all (after import) or a ``[data] reference`` is given; otherwise it runs the
benchmark (every arm evaluated on a labelled target test set). On the job path:

- ``style_labels``: where the style slices' label maps come from. ``"correct"`` (default): the strongest
  source-only model predicts them, ``run`` writes them for correction (NIfTI, DICOM SEG for DICOM inputs, a PNG
  overlay) and stops; a re-run reads the corrected files. ``"given"``: the user supplies them (the run stops and
  names the slices and the files to put). ``"predicted"``: the predictions are used as they are, no human step.
- ``labeller``: the arm whose model predicts those label maps (``"auto"``: ``reference`` if it is an arm, else
  ``position``, else ``baseline``; with ``[train_seg] position = true`` the baseline has the position channels
  too).
- ``segment_with``: the arm whose model segments the collection (``"auto"``: the best mean Dice on the
  reference cases where references exist, else the labeller: the documented default, docs/job.md);
  ``compare_with``: a second model whose predictions enter QC as agreement (``"auto"``, ``"none"``, an arm).
- outputs: ``dicom_seg`` (DICOM SEG next to each NIfTI for DICOM inputs), ``resample`` (to the training
  spacing), ``chunk_slices``/``batch_size`` of the streaming predictor, ``max_thumbnails`` in the report.
- ``executor``: ``"local"`` (one process; shard with ``--shard i/n``) or ``"dask"`` (cases spread over the
  workers of ``dask_scheduler``, or of a local cluster of ``workers`` processes; ``parts`` tasks, 0: 4 per worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from styleseg.errors import ConfigError

STYLE_LABELS = ("given", "correct", "predicted")


@dataclass(frozen=True)
class JobConfig:
    """Settings of the job path (see the module docstring)."""

    mode: Literal["auto", "benchmark", "job"] = "auto"
    style_labels: Literal["given", "correct", "predicted"] = "correct"
    labeller: str = "auto"
    segment_with: str = "auto"
    compare_with: str = "auto"
    dicom_seg: bool = True
    resample: bool = True
    chunk_slices: int = 32
    batch_size: int = 8
    max_thumbnails: int = 12
    executor: Literal["local", "dask"] = "local"
    dask_scheduler: str | None = None
    workers: int = 2
    parts: int = 0

    def __post_init__(self) -> None:
        for name in ("chunk_slices", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[job].{name} must be >= 1, got {getattr(self, name)}")
        if self.max_thumbnails < 0 or self.parts < 0:
            raise ConfigError("[job].max_thumbnails and parts must be >= 0")
