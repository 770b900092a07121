"""Segmentation metrics (pure numpy/scipy): Dice, IoU, HD95, pixel accuracy, bootstrap CIs, paired tests.

Conventions (documented in docs/eval.md; the tests pin them with hand-computed values):

- Arrays are indexed (z, y, x); ``spacing`` is (x, y, z) in mm, as everywhere in styleseg.
- Dice = 2|P∩R| / (|P|+|R|), IoU = |P∩R| / |P∪R| (Jaccard).
- HD95 (mm) = max(P95 of the distances from each predicted surface voxel to the nearest reference
  surface voxel, P95 of the reverse), surfaces = mask XOR its erosion (face connectivity), distances
  by an exact Euclidean distance transform with the voxel spacing. This is MONAI's
  ``compute_hausdorff_distance(percentile=95, spacing=...)`` definition; a test checks both agree.
- Empty masks: both empty -> Dice 1, IoU 1, HD95 0 (nothing there, nothing predicted: a correct
  answer), flagged by ``n_ref == 0``. Exactly one empty -> Dice 0, IoU 0 and HD95 = the diagonal of
  the image grid in mm (the largest distance possible in the volume), flagged ``hd95_capped``: a
  missed structure counts as the worst result rather than silently dropping out of the mean.
- Pixel accuracy (the paper's metric) = share of evaluated voxels where the predicted label equals
  the reference label, reported over all voxels (``all``, air included, so it is close to 1 on any
  chest CT) and over the foreground union (``foreground``: voxels where the reference or the
  prediction holds a structure). Voxels whose predicted label is a structure that is *unannotated*
  in the case are excluded from both (the reference cannot say whether they are right).
- Unannotated structures get no entry (absent, never 0); NaN values are dropped from means.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from styleseg.labels import LabelSchema

#: Metrics computed per structure; the bootstrap and paired tests run over these.
STRUCTURE_METRICS = ("dice", "iou", "hd95")


def _as_bool(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=bool)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient 2|P∩R|/(|P|+|R|); 1.0 when both masks are empty."""
    p, r = _as_bool(pred), _as_bool(ref)
    s = int(p.sum()) + int(r.sum())
    if s == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / s


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union |P∩R|/|P∪R| (Jaccard index); 1.0 when both masks are empty."""
    p, r = _as_bool(pred), _as_bool(ref)
    union = int(np.logical_or(p, r).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, r).sum()) / union


def _zyx_spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(spacing, float)
    if sp.size < ndim:
        raise ValueError(f"spacing {tuple(spacing)} has fewer entries than the array has dimensions ({ndim})")
    return sp[:ndim][::-1]  # (x, y, z) -> array order (z, y, x)


def grid_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Physical length (mm) of the diagonal of a grid, from the first to the last voxel centre."""
    sp = _zyx_spacing(spacing, len(shape))
    return float(np.sqrt(np.sum(((np.asarray(shape) - 1) * sp) ** 2)))


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a mask: the mask minus its erosion with the face-connected structuring element."""
    m = _as_bool(mask)
    if not m.any():
        return m
    return m & ~ndi.binary_erosion(m, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
         cap: float | None = None) -> tuple[float, bool]:
    """95th-percentile symmetric Hausdorff distance in mm; returns (value, capped).

    Both masks empty -> (0.0, False). One empty -> (cap, True), where ``cap`` defaults to the grid
    diagonal (:func:`grid_diagonal`). A volume of one slice (1, y, x) is measured in 2D (its
    surface is the in-plane contour; in 3D every voxel of a one-slice slab would be surface).
    """
    p, r = _as_bool(pred), _as_bool(ref)
    sp = None if spacing is None else tuple(spacing)
    if p.ndim == 3 and p.shape[0] == 1:  # a single slice: 2D contours, not the whole slab as "surface"
        p, r = p[0], r[0]
        sp = None if sp is None else sp[:2]
    if not p.any() and not r.any():
        return 0.0, False
    if not p.any() or not r.any():
        return (grid_diagonal(p.shape, sp) if cap is None else float(cap)), True
    # crop to the joint bounding box plus one voxel: surfaces and distances are unchanged, work is not
    idx = np.argwhere(p | r)
    lo, hi = np.maximum(idx.min(0) - 1, 0), np.minimum(idx.max(0) + 2, p.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    sp_ = _zyx_spacing(sp, p.ndim)
    sf_p, sf_r = surface(p[box]), surface(r[box])
    d_pr = ndi.distance_transform_edt(~sf_r, sampling=sp_)[sf_p]
    d_rp = ndi.distance_transform_edt(~sf_p, sampling=sp_)[sf_r]
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))), False


def structure_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
                      with_hd95: bool = True) -> dict[str, Any]:
    """Dice, IoU, HD95 (mm) and voxel counts of one structure (boolean masks)."""
    p, r = _as_bool(pred), _as_bool(ref)
    out: dict[str, Any] = {"dice": dice(p, r), "iou": iou(p, r)}
    if with_hd95:
        h, capped = hd95(p, r, spacing)
        out["hd95"] = h
        out["hd95_capped"] = capped
    out["n_ref"] = int(r.sum())
    out["n_pred"] = int(p.sum())
    return out


def pixel_accuracy(pred: np.ndarray, ref: np.ndarray, unknown_values: Collection[int] = ()) -> dict[str, Any]:
    """The paper's pixel accuracy, over all voxels and over the foreground union.

    ``unknown_values``: label values of structures that are not annotated in this case; voxels the
    prediction assigns to them are excluded (the reference holds background or another label there,
    but the structure may really be there). Returns ``{"all", "foreground", "n_all", "n_foreground",
    "n_excluded"}``; an accuracy with no voxel to count is NaN.
    """
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} != reference shape {r.shape}")
    keep = ~np.isin(p, list(unknown_values)) if unknown_values else np.ones(p.shape, bool)
    eq = (p == r) & keep
    fg = ((p != 0) | (r != 0)) & keep
    n_all, n_fg = int(keep.sum()), int(fg.sum())
    return {
        "all": float(eq.sum() / n_all) if n_all else float("nan"),
        "foreground": float((eq & fg).sum() / n_fg) if n_fg else float("nan"),
        "n_all": n_all,
        "n_foreground": n_fg,
        "n_excluded": int(p.size - n_all),
    }


def case_metrics(pred: np.ndarray, ref: np.ndarray, schema: LabelSchema, known: Collection[str],
                 spacing: Sequence[float] | None = None, structures: Sequence[str] | None = None,
                 with_hd95: bool = True) -> dict[str, Any]:
    """All metrics of one case: ``{"metrics": {structure: {...}}, "pixel_accuracy": {...}, "unannotated": [...]}``.

    ``known`` = structures annotated (or derived) in the reference of this case; the others are
    unknown there and get no entry. Voxels the prediction assigns to an unknown structure are left out of
    every structure's metrics, as of the pixel accuracy: the reference labels them as whatever surrounds the
    structure (a heart without a contour is "body" there), so a model that finds it would otherwise lose
    Dice on the surrounding class for being right. ``structures`` restricts the per-structure metrics
    (default: all structures of the schema).
    """
    names = list(structures) if structures is not None else list(schema.names)
    unknown = [n for n in schema.names if n not in known]
    unknown_values = [schema.value(n) for n in unknown]
    keep = ~np.isin(pred, unknown_values) if unknown_values else None
    per: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in known:
            continue
        v = schema.value(name)
        p, r = (pred == v, ref == v) if keep is None else ((pred == v) & keep, (ref == v) & keep)
        per[name] = structure_metrics(p, r, spacing, with_hd95=with_hd95)
    pa = pixel_accuracy(pred, ref, unknown_values)
    return {"metrics": per, "pixel_accuracy": pa, "unannotated": unknown}


# --- statistics over cases -----------------------------------------------------------------------------


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray([np.nan if x is None else x for x in values], float)
    return v[np.isfinite(v)]


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float | int]:
    """Mean with a percentile-bootstrap confidence interval over cases (Efron & Tibshirani 1993, ch. 13).

    Cases are resampled with replacement ``n_boot`` times (seeded); the interval is the
    ``(1-level)/2`` and ``(1+level)/2`` quantiles of the resampled means. NaN/None values are
    dropped. One value gives a zero-width interval; none gives NaN with ``n = 0``.
    """
    v = _finite(values)
    n = int(v.size)
    if n == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": 1}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return {"mean": mean, "ci_low": float(lo), "ci_high": float(hi), "n": n}


def paired_comparison(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> dict[str, float | int]:
    """Paired difference ``a - b`` over cases: mean with bootstrap CI and the Wilcoxon signed-rank p.

    Pairs where either value is NaN/None are dropped. The two-sided Wilcoxon signed-rank test
    (scipy.stats.wilcoxon, zero differences dropped as in Wilcoxon's original method) gives
    ``p_wilcoxon``; it is 1.0 when every difference is zero and NaN with no pair.
    """
    from scipy import stats

    x = np.asarray([np.nan if v is None else v for v in a], float)
    y = np.asarray([np.nan if v is None else v for v in b], float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need the same length, got {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    ci = bootstrap_ci(d, n_boot=n_boot, seed=seed, level=level)
    if d.size == 0:
        p = float("nan")
    elif np.all(d == 0):
        p = 1.0
    else:
        p = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return {"mean_diff": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "p_wilcoxon": p,
            "n": ci["n"]}


def summarise(per_case: Sequence[Mapping[str, Any]], structures: Sequence[str], n_boot: int = 2000,
              seed: int = 0) -> dict[str, Any]:
    """Means with CIs from ``per_case`` entries (as written in metrics.json).

    Returns ``{"mean": {structure: {metric: ci}}, "pixel_accuracy": {"all": ci, "foreground": ci}}``.
    """
    mean: dict[str, dict[str, Any]] = {}
    for s in structures:
        rows = [c["metrics"][s] for c in per_case if s in c["metrics"]]
        if not rows:
            continue
        mean[s] = {m: bootstrap_ci([r.get(m) for r in rows], n_boot, seed) for m in STRUCTURE_METRICS
                   if any(m in r for r in rows)}
    pa = {k: bootstrap_ci([c["pixel_accuracy"][k] for c in per_case], n_boot, seed)
          for k in ("all", "foreground")}
    return {"mean": mean, "pixel_accuracy": pa}


def compare_cases(per_case_a: Sequence[Mapping[str, Any]], per_case_b: Sequence[Mapping[str, Any]],
                  structures: Sequence[str], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Paired comparison (a - b) of two per-case lists, matched by case id, per structure and metric."""
    b_by = {c["case"]: c for c in per_case_b}
    pairs = [(c, b_by[c["case"]]) for c in per_case_a if c["case"] in b_by]
    out: dict[str, Any] = {"n_cases": len(pairs), "structures": {}, "pixel_accuracy": {}}
    for s in structures:
        both = [(x["metrics"][s], y["metrics"][s]) for x, y in pairs if s in x["metrics"] and s in y["metrics"]]
        if not both:
            continue
        out["structures"][s] = {
            m: paired_comparison([x.get(m) for x, _ in both], [y.get(m) for _, y in both], n_boot, seed)
            for m in STRUCTURE_METRICS if any(m in x for x, _ in both)
        }
    for k in ("all", "foreground"):
        out["pixel_accuracy"][k] = paired_comparison([x["pixel_accuracy"][k] for x, _ in pairs],
                                                     [y["pixel_accuracy"][k] for _, y in pairs], n_boot, seed)
    return out
