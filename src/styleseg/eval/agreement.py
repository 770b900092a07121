"""Label-free texture robustness: does a model segment two reconstructions of the same scan the same way?

A same-scan pair (one acquisition reconstructed with two kernels, as the sharp/standard pair in
../shared/data/kernel-pairs) has identical anatomy and different texture, so a model that ignores texture
gives the same labels on both. The agreement of a structure is the Dice between the two predictions (1 =
identical); it needs no reference labels (F-Consistency, Shimovolos et al. 2022, measure robustness the
same way on paired reconstructions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.eval.metrics import dice
from styleseg.labels import LabelSchema


def pair_agreement(predict: Callable[[Any], np.ndarray], pairs: Sequence[tuple[str | Path, str | Path]],
                   schema: LabelSchema, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                   ) -> dict[str, Any]:
    """Per structure, the mean over ``pairs`` of the Dice between the labels ``predict`` gives the two scans.

    ``predict(volume) -> label array`` segments a :class:`~styleseg.io.volume.Volume`; ``transform`` (e.g. a
    denoiser, slice by slice) is applied to the HU of both scans first. Returns ``{"mean": {structure: dice},
    "per_pair": [{structure: dice}, ...]}``; a structure absent from both predictions of a pair counts as
    agreeing (Dice 1, the metrics' convention)."""
    from styleseg.io.volume import read_nifti

    per_pair = []
    for a, b in pairs:
        labs = []
        for path in (a, b):
            vol = read_nifti(path)
            if transform is not None:
                vol = vol.with_array(np.stack([transform(s.astype(np.float32)) for s in vol.array]))
            labs.append(np.asarray(predict(vol)))
        per_pair.append({n: dice(labs[0] == v, labs[1] == v) for n, v in schema.structures})
    mean = {n: float(np.mean([pp[n] for pp in per_pair])) for n, _ in schema.structures} if per_pair else {}
    return {"mean": mean, "per_pair": per_pair}
