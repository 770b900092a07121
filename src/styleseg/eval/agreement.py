"""Label-free texture robustness: does a model segment two reconstructions of the same scan the same way?

A same-scan pair (one acquisition reconstructed with two kernels, as the sharp/standard pair in
../shared/data/kernel-pairs) has identical anatomy and different texture, so a model that ignores texture
gives the same labels on both. The agreement of a structure is the Dice between the two predictions (1 =
identical); it needs no reference labels (F-Consistency, Shimovolos et al. 2022, measure robustness the
same way on paired reconstructions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    "per_pair": [{structure: dice}, ...], "absent": [{structure: bool}, ...]}``; a structure absent from both
    predictions of a pair counts as agreeing (Dice 1, the metrics' convention), and ``absent`` says where that
    happened, so that a model which finds a structure in neither scan is not read as a consistent one."""
    from styleseg.io.volume import read_nifti

    per_pair, absent = [], []
    for a, b in pairs:
        labs = []
        for path in (a, b):
            vol = read_nifti(path)
            if transform is not None:
                vol = vol.with_array(np.stack([transform(s.astype(np.float32)) for s in vol.array]))
            labs.append(np.asarray(predict(vol)))
        per_pair.append({n: dice(labs[0] == v, labs[1] == v) for n, v in schema.structures})
        absent.append({n: not bool((labs[0] == v).any() or (labs[1] == v).any()) for n, v in schema.structures})
    mean = {n: float(np.mean([pp[n] for pp in per_pair])) for n, _ in schema.structures} if per_pair else {}
    return {"mean": mean, "per_pair": per_pair, "absent": absent}


def summarise_agreement(per_seed: Mapping[str, Mapping[str, Mapping[str, Any]]], reference: str | None,
                        n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Agreement over training seeds, as :mod:`styleseg.eval.seeds` treats Dice: ``per_seed[arm][seed]`` is a
    :func:`pair_agreement` result; each arm's (seeds, pairs) table per structure gives the mean with a bootstrap
    CI over seeds and pairs, and its paired difference to ``reference`` (the same pairs, each arm's seeds
    resampled on their own; ``resolved`` when the CI excludes 0). ``absent``: in how many of the seed x pair
    cells neither prediction contains the structure (those count as agreement 1 in the mean). The difference
    leaves such cells out, of either arm: finding a structure in neither scan is no evidence of consistency, so
    an arm that never finds it has no difference (NaN, unresolved) instead of a "win" of 1 - the reference's."""
    from styleseg.eval.seeds import paired_seed_case_diff, seed_case_ci

    tables: dict[str, dict[str, np.ndarray]] = {}
    absent: dict[str, dict[str, int]] = {}
    found: dict[str, dict[str, np.ndarray]] = {}
    for arm, seeds in per_seed.items():
        runs = [seeds[k] for k in sorted(seeds, key=str)]
        if not runs:
            continue
        structures = list(runs[0]["per_pair"][0]) if runs[0]["per_pair"] else []
        tables[arm] = {s: np.array([[pp[s] for pp in r["per_pair"]] for r in runs], float) for s in structures}
        absent[arm] = {s: int(sum(ab.get(s, False) for r in runs for ab in r.get("absent", []))) for s in structures}
        found[arm] = {s: np.array([[not ab.get(s, False) for ab in r.get("absent", [{}] * len(r["per_pair"]))]
                                   for r in runs], bool) for s in structures}
    arms: dict[str, Any] = {}
    for arm, by in tables.items():
        entry: dict[str, Any] = {"mean": {}, "absent": absent[arm]}
        for s, t in by.items():
            entry["mean"][s] = seed_case_ci(t, n_boot, seed)
        if reference is not None and arm != reference and reference in tables:
            ref = tables[reference]
            entry["vs_reference"] = {
                s: paired_seed_case_diff(np.where(found[arm][s], t, np.nan),
                                         np.where(found[reference][s], ref[s], np.nan), n_boot, seed)
                for s, t in by.items() if s in ref and t.shape[1] == ref[s].shape[1]}
        arms[arm] = entry
    return {"reference": reference if reference in tables else None, "arms": arms}
