"""The nearest style (texture cluster) of every case of a collection: a QC column of the job.

A case whose slices were candidates of style selection (``styles.json`` extras ``clusters``) belongs to the
style that holds most of its candidate slices (ties: the lower style index). Any other case (a reference case
kept out of the style pool, or a manual style set) gets the style whose slice is nearest in NPS descriptor
space (:func:`styleseg.style.descriptors.slice_descriptor`, the features selection clusters on, at native
spacing): the mean squared difference over the features finite in both, on up to three candidate slices of
the case, the majority over them. The descriptors are log noise std, frequency fractions and log NPS, all of
similar scale, so they are compared unstandardised.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from styleseg.io.dataset import Dataset
from styleseg.labels import derive_body
from styleseg.style.descriptors import slice_descriptor
from styleseg.style.select import candidate_slices
from styleseg.style.styleset import StyleSet


def style_name(index: int) -> str:
    return f"style {index}"


def _majority(votes: Sequence[int]) -> int:
    counts = Counter(votes)
    best = max(counts.values())
    return min(k for k, v in counts.items() if v == best)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.mean((a[ok] - b[ok]) ** 2)) if ok.any() else float("inf")


def nearest_styles(target: Path, styles_dir: Path, cases: Sequence[str] | None = None, roi: int = 32,
                   ) -> dict[str, str]:
    """``{case: "style K"}`` for ``cases`` of the dataset ``target`` (default: all), see the module docstring."""
    ds = Dataset(target)
    sset = StyleSet.load(styles_dir)
    cases = list(cases) if cases is not None else [c.case_id for c in ds.cases]
    votes: dict[str, list[int]] = {}
    for cl in sset.extras.get("clusters", []) or []:
        for case, _slice in cl.get("members", []):
            votes.setdefault(str(case), []).append(int(cl["style"]))
    out = {c: style_name(_majority(votes[c])) for c in cases if votes.get(c)}
    todo = [c for c in cases if c not in out]
    if not todo or not sset.styles:
        return out
    refs = [(s.index, slice_descriptor(s.hu, derive_body(s.hu), roi)) for s in sset.styles]
    for cid in todo:
        arr = ds.load_image(cid).array
        picks = []
        for k in candidate_slices(arr, 3):
            hu = np.asarray(arr[k], np.float32)
            d = slice_descriptor(hu, derive_body(hu), roi)
            picks.append(min(refs, key=lambda r, d=d: (_distance(d, r[1]), r[0]))[0])
        out[cid] = style_name(_majority(picks)) if picks else ""
    return out
