"""Label schema (structure names <-> label values, colours, ROI-name synonyms) and derived masks.

The default schema is the chest schema of ../shared/data/nsclc (values 1-5) plus ``body`` (6): the
torso outline minus the other structures. NSCLC-Radiomics has no body contour, so importers derive it
from the image (:func:`derive_body`) and record it as *derived*. Partial annotation is first class: a
structure that a case does not list as annotated is *unknown* in that case, never background.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from styleseg.errors import InputError

#: ROI-name synonyms (normalised: lower case, separators removed) for each default structure.
DEFAULT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "lung_left": ("lungleft", "leftlung", "lungl", "llung", "lunglt", "ltlung", "lungsx", "lung_l"),
    "lung_right": ("lungright", "rightlung", "lungr", "rlung", "lungrt", "rtlung", "lungdx", "lung_r"),
    "heart": ("heart", "cor", "coeur", "herz"),
    "esophagus": ("esophagus", "oesophagus", "esophagus1", "eso", "esoph"),
    "spinal_cord": ("spinalcord", "cord", "spinecord", "spinalcanal", "myelon", "spinalcordprv0"),
    "body": ("body", "external", "skin", "outline", "patient", "bodycontour", "torso"),
}

DEFAULT_COLOURS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "lung_left": (80, 160, 255),
    "lung_right": (255, 200, 60),
    "heart": (230, 40, 60),
    "esophagus": (60, 200, 90),
    "spinal_cord": (200, 80, 220),
    "body": (120, 110, 100),
}


def normalise_roi_name(name: str) -> str:
    """Lower-case an ROI name and drop separators: 'Lung-Left', 'LUNG_L ' -> 'lungleft', 'lungl'."""
    return re.sub(r"[\s_\-\.()]+", "", name.strip().lower())


@dataclass(frozen=True)
class LabelSchema:
    """Structure names and label values; value 0 is always background.

    ``structures`` maps name -> value (values 1..255, unique). Later structures win where masks
    overlap when a label map is built from several masks.
    """

    structures: tuple[tuple[str, int], ...]
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        names = [n for n, _ in self.structures]
        values = [v for _, v in self.structures]
        if len(set(names)) != len(names) or len(set(values)) != len(values):
            raise ValueError(f"label schema has duplicate names or values: {self.structures}")
        if "background" in names or any(not 0 < v < 256 for v in values):
            raise ValueError("label values must be 1..255 and 'background' is implicit (0)")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def default(cls) -> LabelSchema:
        return cls(
            (("lung_left", 1), ("lung_right", 2), ("heart", 3), ("esophagus", 4), ("spinal_cord", 5),
             ("body", 6)),
            synonyms=DEFAULT_SYNONYMS,
        )

    @classmethod
    def from_labels_dict(cls, labels: Mapping[str, int]) -> LabelSchema:
        """From nnU-Net's dataset.json ``labels`` ({"background": 0, "heart": 3, ...})."""
        items = tuple(sorted(((str(k), int(v)) for k, v in labels.items() if k != "background"),
                             key=lambda kv: kv[1]))
        return cls(items, synonyms={k: v for k, v in DEFAULT_SYNONYMS.items() if k in dict(items)})

    def to_labels_dict(self) -> dict[str, int]:
        return {"background": 0, **dict(self.structures)}

    # --- queries -------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.structures)

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(v for _, v in self.structures)

    @property
    def num_classes(self) -> int:
        """Number of classes including background (for one-hot and network outputs)."""
        return max(self.values, default=0) + 1

    def value(self, name: str) -> int:
        d = dict(self.structures)
        if name not in d:
            raise KeyError(f"unknown structure {name!r}; the schema has {', '.join(self.names)}")
        return d[name]

    def name(self, value: int) -> str:
        if value == 0:
            return "background"
        for n, v in self.structures:
            if v == value:
                return n
        raise KeyError(f"label value {value} is not in the schema ({self.to_labels_dict()})")

    def colour(self, name: str) -> tuple[int, int, int]:
        if name in DEFAULT_COLOURS:
            return DEFAULT_COLOURS[name]
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        return tuple(int(c) for c in rng.integers(40, 255, 3))  # type: ignore[return-value]

    def match_roi(self, roi_name: str, extra: Mapping[str, str] | None = None) -> str | None:
        """Map an RTSTRUCT/SEG ROI name to a schema structure, or None if it is not in the schema.

        ``extra`` maps raw ROI names (as written, case-insensitive) to structure names and wins over
        the built-in synonyms (a MAP.toml given by the user).
        """
        norm = normalise_roi_name(roi_name)
        if extra:
            for raw, target in extra.items():
                if normalise_roi_name(raw) == norm:
                    return target if target in self.names else None
        for name in self.names:
            if norm == normalise_roi_name(name):
                return name
            if norm in {normalise_roi_name(s) for s in self.synonyms.get(name, ())}:
                return name
        return None

    def check_label_values(self, label: np.ndarray, where: object = None) -> None:
        """Raise InputError if the label map holds values that are not in the schema."""
        present = np.unique(label)
        bad = sorted(set(int(v) for v in present) - {0, *self.values})
        if bad:
            raise InputError(
                where if isinstance(where, str | type(None)) else str(where),
                f"label values {bad} are not in the label schema {self.to_labels_dict()}",
                "map them with --structures MAP.toml or fix the label file",
            )

    def compose(self, masks: Mapping[str, np.ndarray], shape: Iterable[int] | None = None) -> np.ndarray:
        """Build a uint8 label map from boolean masks; later structures in the schema win overlaps.

        ``body`` (if present) is painted first so organs lie on top of it.
        """
        first = next(iter(masks.values()), None)
        out = np.zeros(tuple(shape) if shape is not None else first.shape, np.uint8)  # type: ignore[union-attr]
        order = sorted(masks, key=lambda n: (n != "body", self.names.index(n)))
        for name in order:
            out[np.asarray(masks[name], bool)] = self.value(name)
        return out


def body_components(hu: np.ndarray, threshold: float = -400.0) -> tuple[np.ndarray, int]:
    """(labels, n): the connected components (6-connected; 4-connected within a slice) of ``hu`` (z, y, x) above
    ``threshold`` HU after a 5 x 5 in-plane box opening, which detaches a thin table under the patient: the first
    steps of :func:`derive_body`, shared with the position channels' body frame and the predictor's crop."""
    from scipy import ndimage as ndi

    mask = (np.asarray(hu) > threshold).view(np.uint8)
    # a 5x5 box opening as 1D minimum then maximum filters along rows and columns, zero outside the slice: the
    # same mask as binary_erosion/binary_dilation with the 5x5 box, ~5x faster
    for filt in (ndi.minimum_filter1d, ndi.maximum_filter1d):
        for axis in (-2, -1):
            mask = filt(mask, 5, axis=axis, mode="constant", cval=0)
    return ndi.label(mask.view(bool))


def derive_body(hu: np.ndarray, threshold: float = -400.0) -> np.ndarray:
    """Body (torso) mask of a CT volume (z, y, x) in HU: threshold, largest 3D component, fill holes.

    Lungs are enclosed by the chest wall, so hole filling per slice puts them inside the body. A thin
    table under the patient is detached by a small opening before the component search.
    """
    from scipy import ndimage as ndi

    vol = np.asarray(hu)
    squeeze = vol.ndim == 2
    if squeeze:
        vol = vol[None]
    lab, n = body_components(vol, threshold)
    if n == 0:
        out = np.zeros(vol.shape, bool)
    else:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]  # voxels per component (fast)
        out = lab == (int(np.argmax(sizes)) + 1)
        out = np.stack([ndi.binary_fill_holes(s) for s in out])
    return out[0] if squeeze else out


def body_bounds(hu: np.ndarray, threshold: float = -400.0) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), inclusive: the bounding box of :func:`derive_body` of one HU slice (H, W), None where it
    is empty. The box of the largest component, without the hole filling: a hole lies inside its component's
    box, so the box is the same at a fraction of the cost."""
    from scipy import ndimage as ndi

    lab, n = body_components(np.asarray(hu)[None], threshold)
    if n == 0:
        return None
    biggest = int(np.argmax(np.bincount(lab.ravel(), minlength=n + 1)[1:])) + 1
    _, ys, xs = ndi.find_objects(lab, max_label=biggest)[-1]
    return ys.start, ys.stop - 1, xs.start, xs.stop - 1


def add_body(label: np.ndarray, hu: np.ndarray, schema: LabelSchema) -> np.ndarray:
    """Return a copy of ``label`` with background pixels inside the derived body set to ``body``."""
    out = np.array(label, np.uint8, copy=True)
    body = derive_body(hu)
    out[(out == 0) & body] = schema.value("body")
    return out
