"""Quality control of a segmented collection without labels: per-case plausibility checks, flags, a review order.

When the target has no labels (the job path of issue #15), metrics cannot say which cases failed. What
can be checked is anatomy: organ volumes in millilitres, whether an organ is one connected piece,
whether the left lung lies on the patient's left, whether a structure vanishes on a slice inside its
extent, and (optionally) whether two models agree on the same scan. :func:`qc_case` computes these
for one predicted label volume and flags what is implausible, with a reason and the slice where it
shows; :func:`write_qc_csv` writes one row per case, worst first, so a person reviews the worst
cases first; :func:`qc_thumbnail` draws the flagged slice. Thresholds are the module constants
below (reasons in docs/qc.md); :class:`QCThresholds` overrides them per call.

Geometry follows :class:`styleseg.io.volume.Volume` (arrays (z, y, x), LPS): the patient's left is +x
in physical coordinates, so sides are judged in mm through the volume's direction, never by array
index. Pure numpy/scipy (matplotlib only for the thumbnail).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from styleseg.errors import InputError
from styleseg.io.atomic import atomic_path, write_text
from styleseg.io.volume import Volume
from styleseg.labels import LabelSchema

#: Plausible volume (ml) of a structure; the lower bound is checked only when its whole z-extent lies
#: inside the scan (a scan that cuts an organ off measures part of it), the upper bound always.
VOLUME_RANGE_ML: dict[str, tuple[float, float]] = {
    "lung_left": (500.0, 6000.0), "lung_right": (500.0, 6000.0), "heart": (200.0, 1500.0)}
#: Structures a chest CT must show; "missing" when absent. The heart is expected when both lungs are
#: wholly in the field (it lies between them in z).
EXPECTED = ("lung_left", "lung_right")
#: A connected component (26-connectivity, gap slices bridged so that a vanishing slice counts as a gap,
#: not also as a split) holding at least this share of its structure's volume is "large".
LARGE_COMPONENT_SHARE = 0.10
#: At most this many large components per structure (body: unchecked: arms can be separate).
MAX_LARGE_COMPONENTS: dict[str, int] = {n: 1 for n in ("lung_left", "lung_right", "heart", "esophagus",
                                                        "spinal_cord")}
#: Share of a lung's voxels that must lie on its own side of the midline.
LR_SIDE_MIN = 0.90
#: Plausible left / right lung volume ratio (both wholly in the field; typically about 0.9).
LR_RATIO_RANGE = (0.5, 1.5)
#: Dice between two predictions of the same case below which the structure is flagged.
MIN_AGREEMENT = 0.70
#: Components, gaps and the in-field volume checks need at least this many slices.
MIN_SLICES_3D = 3
#: Review-score weight of each flag code (the score is the sum; see :func:`qc_case`).
FLAG_WEIGHTS: dict[str, float] = {"missing": 5.0, "lr_swap": 5.0, "lr_side": 3.0, "volume_low": 3.0,
                                  "volume_high": 3.0, "lr_ratio": 2.0, "disagreement": 2.0,
                                  "fragmented": 1.0, "gap": 1.0}
#: Soft-tissue window (level, width) in HU for thumbnails.
SOFT_TISSUE_WINDOW = (40.0, 400.0)


@dataclass(frozen=True)
class QCThresholds:
    """The module constants, as one object a caller can override (``QCThresholds(min_agreement=0.6)``)."""

    volume_range_ml: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(VOLUME_RANGE_ML))
    expected: tuple[str, ...] = EXPECTED
    large_component_share: float = LARGE_COMPONENT_SHARE
    max_large_components: Mapping[str, int] = field(default_factory=lambda: dict(MAX_LARGE_COMPONENTS))
    lr_side_min: float = LR_SIDE_MIN
    lr_ratio_range: tuple[float, float] = LR_RATIO_RANGE
    min_agreement: float = MIN_AGREEMENT
    min_slices_3d: int = MIN_SLICES_3D


@dataclass(frozen=True)
class Flag:
    """One reason to look at a case: a code (a key of FLAG_WEIGHTS), the structure, a sentence, the slice."""

    code: str
    structure: str | None
    reason: str
    slice: int | None

    @property
    def key(self) -> str:
        return f"{self.code}:{self.structure}" if self.structure else self.code


@dataclass
class StructureQC:
    """Label-free measurements of one structure in one case."""

    volume_ml: float = 0.0
    n_components: int = 0
    n_large_components: int = 0
    largest_share: float | None = None  # volume share of the largest component
    z_range: tuple[int, int] | None = None
    in_field: bool = False  # its whole z-extent lies inside the scan (does not touch the first/last slice)
    gap_slices: list[int] = field(default_factory=list)  # slices inside its z-extent where it vanishes
    agreement: float | None = None  # Dice with the other prediction (None: none given, or absent in both)


@dataclass
class QCRecord:
    """The QC of one case: measurements per structure, left/right checks, flags and the review score."""

    case: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    structures: dict[str, StructureQC]
    lr: dict[str, float | None]
    flags: list[Flag]
    score: float
    style: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (NaN-free: unknown values are None)."""
        return {"case": self.case, "score": self.score, "style": self.style, "shape": list(self.shape),
                "spacing": list(self.spacing), "lr": dict(self.lr),
                "flags": [{"code": f.code, "structure": f.structure, "reason": f.reason, "slice": f.slice}
                          for f in self.flags],
                "structures": {n: {**vars(s), "z_range": list(s.z_range) if s.z_range else None}
                               for n, s in self.structures.items()}}


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    s = int(a.sum()) + int(b.sum())
    return None if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def _physical_x(label: Volume, zyx: np.ndarray) -> np.ndarray:
    """LPS x (mm; + is the patient's left) of voxel indices (N, 3) in (z, y, x) order."""
    d = np.asarray(label.direction, float).reshape(3, 3)
    steps = zyx[:, ::-1] * np.asarray(label.spacing)[None]
    return label.origin[0] + steps @ d[0]


@dataclass(frozen=True)
class _Mask:
    """A structure's mask cropped to its bounding box, and the box's corner (z, y, x) in the volume."""

    crop: np.ndarray
    corner: tuple[int, int, int]

    def voxels(self) -> np.ndarray:
        """(N, 3) voxel indices (z, y, x) of the structure in the whole volume."""
        return np.argwhere(self.crop) + np.asarray(self.corner)[None]


def _crops(arr: np.ndarray, schema: LabelSchema) -> dict[str, _Mask | None]:
    """Every structure's mask, cropped to its bounding box (None when absent): components and centroids
    then cost the organ's size, not the volume's."""
    boxes = ndi.find_objects(arr)
    out: dict[str, _Mask | None] = {}
    for name, v in schema.structures:
        box = boxes[v - 1] if v <= len(boxes) else None
        out[name] = None if box is None else _Mask(arr[box] == v, tuple(b.start for b in box))  # type: ignore[arg-type]
    return out


def _measure(m: _Mask, nz: int, t: QCThresholds, three_d: bool) -> tuple[StructureQC, int | None]:
    """Measurements of one present structure, and the median slice of its second-largest component."""
    sq = StructureQC()
    present = m.crop.any(axis=(1, 2))
    z0 = m.corner[0]
    zs = np.nonzero(present)[0] + z0
    sq.z_range = (int(zs[0]), int(zs[-1]))
    sq.in_field = bool(three_d and zs[0] > 0 and zs[-1] < nz - 1)
    sq.gap_slices = [int(z) + z0 for z in np.nonzero(~present)[0]] if three_d else []
    bridged = m.crop.copy()
    for z in np.nonzero(~present)[0]:  # a vanishing slice is reported once, as a gap, not also as a split
        below, above = np.nonzero(present[:z])[0][-1], z + 1 + np.nonzero(present[z + 1:])[0][0]
        bridged[z] = m.crop[below] | m.crop[above]
    lab, n = ndi.label(bridged, structure=np.ones((3, 3, 3), bool))  # 26-connectivity
    lab[~m.crop] = 0
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    order = np.argsort(sizes)[::-1]
    sq.n_components = int(np.count_nonzero(sizes))
    sq.n_large_components = int(np.sum(sizes >= t.large_component_share * sizes.sum()))
    sq.largest_share = float(sizes[order[0]] / sizes.sum())
    second = int(np.median(np.nonzero(lab == order[1] + 1)[0])) + z0 if sq.n_components > 1 else None
    return sq, second


def qc_case(case: str, label: Volume, schema: LabelSchema | None = None, *, other: Volume | None = None,
            style: str | None = None, thresholds: QCThresholds | None = None) -> QCRecord:
    """QC record of one predicted label volume (uint8 values of ``schema``, default the chest schema).

    ``other``: a second prediction of the same case on the same grid (e.g. the baseline model's): Dice
    per structure becomes ``agreement``. ``style``: the nearest style (texture cluster) of the case, as
    the caller determined it; kept in the record. Score = sum of FLAG_WEIGHTS of the flags, plus
    (1 - lowest agreement) when ``other`` is given, so among equally flagged cases the one the two
    models disagree on most comes first.
    """
    schema = schema or LabelSchema.default()
    t = thresholds or QCThresholds()
    arr = np.asarray(label.array)
    where = label.tags.get("source")
    unknown = sorted(set(np.unique(arr).tolist()) - set(schema.values) - {0})
    if unknown:
        raise InputError(where, f"label values {unknown} are not in the label schema ({schema.to_labels_dict()})",
                         "pass the schema the model was trained with")
    if other is not None and tuple(other.shape) != tuple(arr.shape):
        raise InputError(other.tags.get("source"), f"second prediction has shape {other.shape}, the case "
                         f"{arr.shape}", "compare predictions made on the same image")
    nz = arr.shape[0]
    three_d = nz >= t.min_slices_3d
    ml = float(np.prod(label.spacing)) / 1000.0
    flags: list[Flag] = []
    out: dict[str, StructureQC] = {}
    masks = _crops(arr, schema)
    for name, m in masks.items():
        if m is None:
            out[name] = StructureQC()
            if name in t.expected:
                flags.append(Flag("missing", name, f"no {name} at all: not a chest CT, or the model failed", nz // 2))
            continue
        sq, second = _measure(m, nz, t, three_d)
        sq.volume_ml = round(float(m.crop.sum()) * ml, 3)
        out[name] = sq
        peak = int(np.argmax(m.crop.sum(axis=(1, 2)))) + m.corner[0]
        lo, hi = t.volume_range_ml.get(name, (0.0, float("inf")))
        if sq.volume_ml > hi:
            flags.append(Flag("volume_high", name, f"{name} {sq.volume_ml:.0f} ml > {hi:.0f} ml", peak))
        elif sq.in_field and sq.volume_ml < lo:
            flags.append(Flag("volume_low", name, f"{name} {sq.volume_ml:.0f} ml < {lo:.0f} ml although wholly in "
                              "the scan", peak))
        limit = t.max_large_components.get(name)
        if three_d and limit is not None and sq.n_large_components > limit:
            flags.append(Flag("fragmented", name, f"{name} in {sq.n_large_components} large pieces (largest "
                              f"{100 * (sq.largest_share or 0):.0f} %)", peak if second is None else second))
        if sq.gap_slices:
            g = sq.gap_slices
            flags.append(Flag("gap", name, f"{name} vanishes on {len(g)} slice(s) inside its extent "
                              f"(first: slice {g[0]})", g[0]))
    if other is not None:
        for name, v in schema.structures:
            a, b = arr == v, np.asarray(other.array) == v
            sq = out[name]
            sq.agreement = _dice(a, b)
            if sq.agreement is not None and sq.agreement < t.min_agreement:
                z = int(np.argmax((a != b).sum(axis=(1, 2))))
                flags.append(Flag("disagreement", name, f"{name}: Dice {sq.agreement:.2f} with the other "
                                  f"prediction < {t.min_agreement:.2f}", z))
    lr = _left_right(label, masks, out, t, flags)
    both = (out.get("lung_left") or StructureQC()).in_field and (out.get("lung_right") or StructureQC()).in_field
    if "heart" in out and out["heart"].z_range is None and both:
        flags.append(Flag("missing", "heart", "no heart although both lungs are wholly in the scan", nz // 2))
    agreements = [s.agreement for s in out.values() if s.agreement is not None]
    score = sum(FLAG_WEIGHTS.get(f.code, 1.0) for f in flags) + (1.0 - min(agreements) if agreements else 0.0)
    return QCRecord(case, tuple(arr.shape), tuple(label.spacing), out, lr, flags, round(score, 4), style)


def _left_right(label: Volume, masks: Mapping[str, _Mask | None], out: Mapping[str, StructureQC], t: QCThresholds,
                flags: list[Flag]) -> dict[str, float | None]:
    """Left/right lung checks in LPS millimetres; the midline is the spinal cord's mean x, else the lungs'.

    lung_left must lie mostly at larger x (the patient's left, the image's right in the radiological
    view) than the midline, lung_right at smaller x.
    """
    lr: dict[str, float | None] = {"lr_volume_ratio": None, "lung_left_on_left": None, "lung_right_on_right": None}
    ml, mr = masks.get("lung_left"), masks.get("lung_right")
    if ml is None or mr is None:
        return lr
    xl, xr = _physical_x(label, ml.voxels()), _physical_x(label, mr.voxels())
    cord = masks.get("spinal_cord")
    mid = float(np.mean(_physical_x(label, cord.voxels()))) if cord is not None else \
        0.5 * (float(xl.mean()) + float(xr.mean()))
    lr["lung_left_on_left"] = round(float(np.mean(xl > mid)), 4)
    lr["lung_right_on_right"] = round(float(np.mean(xr < mid)), 4)
    vl, vr = out["lung_left"].volume_ml, out["lung_right"].volume_ml
    lr["lr_volume_ratio"] = round(vl / vr, 4)
    area = np.zeros(label.shape[0])
    for m in (ml, mr):
        area[m.corner[0]:m.corner[0] + m.crop.shape[0]] += m.crop.sum(axis=(1, 2))
    peak = int(np.argmax(area))
    if xl.mean() < xr.mean():
        flags.append(Flag("lr_swap", None, "lung_left lies on the patient's right of lung_right: left/right "
                          "swapped (flipped image or labels)", peak))
    elif min(lr["lung_left_on_left"], lr["lung_right_on_right"]) < t.lr_side_min:
        flags.append(Flag("lr_side", None, f"only {100 * lr['lung_left_on_left']:.0f} % of lung_left / "
                          f"{100 * lr['lung_right_on_right']:.0f} % of lung_right on their own side of the midline",
                          peak))
    lo, hi = t.lr_ratio_range
    if out["lung_left"].in_field and out["lung_right"].in_field and not lo <= vl / vr <= hi:
        flags.append(Flag("lr_ratio", None, f"left/right lung volume ratio {vl / vr:.2f} outside {lo}-{hi}", peak))
    return lr


def review_order(records: Iterable[QCRecord]) -> list[QCRecord]:
    """Worst first: by score (descending), then case id."""
    return sorted(records, key=lambda r: (-r.score, r.case))


def qc_columns(schema: LabelSchema | None = None) -> list[str]:
    """The CSV's columns, in their (stable) order: case-level columns, then one block per structure."""
    schema = schema or LabelSchema.default()
    base = ["case", "score", "n_flags", "flags", "style", "n_slices", "spacing_x", "spacing_y", "spacing_z",
            "lr_volume_ratio", "lung_left_on_left", "lung_right_on_right"]
    per = ["ml", "components", "large_components", "largest_share", "in_field", "gap_slices", "agreement"]
    return base + [f"{n}_{c}" for n in schema.names for c in per] + ["reasons"]


def qc_row(record: QCRecord, schema: LabelSchema | None = None) -> dict[str, Any]:
    """One CSV row (column -> value; '' where a value does not apply)."""
    schema = schema or LabelSchema.default()
    row: dict[str, Any] = {"case": record.case, "score": record.score, "n_flags": len(record.flags),
                           "flags": ";".join(f.key for f in record.flags), "style": record.style or "",
                           "n_slices": record.shape[0], "spacing_x": record.spacing[0],
                           "spacing_y": record.spacing[1], "spacing_z": record.spacing[2],
                           "reasons": "; ".join(f.reason for f in record.flags)}
    row.update({k: "" if v is None else v for k, v in record.lr.items()})
    for n in schema.names:
        s = record.structures.get(n, StructureQC())
        row.update({f"{n}_ml": s.volume_ml, f"{n}_components": s.n_components,
                    f"{n}_large_components": s.n_large_components,
                    f"{n}_largest_share": "" if s.largest_share is None else round(s.largest_share, 4),
                    f"{n}_in_field": int(s.in_field), f"{n}_gap_slices": len(s.gap_slices),
                    f"{n}_agreement": "" if s.agreement is None else round(s.agreement, 4)})
    return row


def write_qc_csv(records: Iterable[QCRecord], path: str | Path, schema: LabelSchema | None = None) -> Path:
    """Write the QC table, worst case first, atomically (temporary file, then rename)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=qc_columns(schema), lineterminator="\n")
    w.writeheader()
    for r in review_order(records):
        w.writerow(qc_row(r, schema))
    write_text(path, buf.getvalue())
    return Path(path)


def qc_thumbnail(image: Volume, label: Volume, record: QCRecord, out: str | Path, schema: LabelSchema | None = None,
                 flag: Flag | None = None, other: Volume | None = None, dpi: int = 80) -> Path:
    """PNG of the slice where ``flag`` (default: the record's first flag) applies: CT in a soft-tissue
    window, then the prediction overlaid in the schema colours (as in the report's overlays), then
    ``other`` if given. Patient left is at image right when the direction is identity (radiological view)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from styleseg.eval.figures import overlay_rgb

    schema = schema or LabelSchema.default()
    flag = flag or (record.flags[0] if record.flags else None)
    z = flag.slice if flag is not None and flag.slice is not None else label.shape[0] // 2
    level, width = SOFT_TISSUE_WINDOW
    ct01 = (np.asarray(image.array[z], np.float32) - (level - width / 2)) / width
    panels = [("CT", np.repeat(np.clip(ct01, 0, 1)[..., None], 3, axis=2)),
              ("prediction", overlay_rgb(ct01, np.asarray(label.array[z]), schema))]
    if other is not None:
        panels.append(("other", overlay_rgb(ct01, np.asarray(other.array[z]), schema)))
    fig = Figure(figsize=(3.0 * len(panels), 3.4))
    FigureCanvasAgg(fig)
    for i, (title, rgb) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(rgb, aspect=label.spacing[1] / label.spacing[0], interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    why = flag.reason if flag is not None else "no flag"
    fig.suptitle(f"{record.case}  slice {z}: {why}", fontsize=8, wrap=True)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out


def qc_json(records: Sequence[QCRecord]) -> list[dict[str, Any]]:
    """The records as JSON-able dicts, worst first."""
    return [r.to_json() for r in review_order(records)]
