"""The style-set folder: the chosen style slices, their label maps, and why they were chosen.

This is the fixed interface between style selection (``styleseg pick-styles``) and generator training
(``styleseg train-styles``). Read and write it only through :class:`StyleSet`::

    STYLES/
      styles.json
      style_00_image.nii.gz   a 1-slice HU volume (int16) with the source slice's geometry
      style_00_label.nii.gz   its 1-slice uint8 label map in the dataset's schema (may be absent:
                              then ``"label": null`` and generator training must refuse)
      ...
      contact_sheet.png       (written by selection)

``styles.json``::

    {"format_version": 1, "dataset": "/abs/path/of/target", "schema": {"background": 0, ...},
     "method": "kmedoids on NPS+Gram descriptors" | "manual",
     "styles": [{"index": 0, "case_id": "T003", "slice": 4, "image": "style_00_image.nii.gz",
                 "label": "style_00_label.nii.gz", "label_source": "dataset:labelsRef",
                 "cluster_size": 12, "tags": {...}, "why": "medoid of cluster 0 ..."}]}

Loading validates everything a generator relies on and names the offending file: a missing image, an
image that is not one slice, a label on another grid, label values outside the schema, an unknown
``format_version``. Saving is atomic (the whole folder appears at once, or not at all).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.errors import InputError
from styleseg.io.atomic import atomic_dir, write_json
from styleseg.io.volume import Volume, check_same_grid, read_nifti, write_nifti
from styleseg.labels import LabelSchema

log = logging.getLogger("styleseg.style.styleset")

STYLES_JSON = "styles.json"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)


def image_name(index: int) -> str:
    return f"style_{index:02d}_image.nii.gz"


def label_name(index: int) -> str:
    return f"style_{index:02d}_label.nii.gz"


@dataclass
class StyleSlice:
    """One style slice: a 1-slice HU image, its label map (or None), and where it came from.

    ``label_source`` is ``"dataset:labelsTr"``, ``"dataset:labelsRef"``, ``"model:<path>"``
    (predicted: a person should check it) or ``"manual"``; None when there is no label.
    """

    index: int
    case_id: str
    slice: int
    image: Volume
    label: Volume | None = None
    label_source: str | None = None
    cluster_size: int = 1
    tags: dict[str, Any] = field(default_factory=dict)
    why: str = ""

    def __post_init__(self) -> None:
        if self.image.shape[0] != 1:
            raise ValueError(f"style image must be one slice, got shape {self.image.shape}")
        if self.label is not None and self.label.shape != self.image.shape:
            raise ValueError(f"style label shape {self.label.shape} != image shape {self.image.shape}")

    @property
    def hu(self) -> np.ndarray:
        """The slice as a 2D float32 HU array (H, W)."""
        return np.asarray(self.image.array[0], np.float32)

    @property
    def label_map(self) -> np.ndarray | None:
        """The label map as a 2D uint8 array (H, W), or None."""
        return None if self.label is None else np.asarray(self.label.array[0], np.uint8)


@dataclass
class StyleSet:
    """A set of style slices of one target dataset (see the module docstring for the folder)."""

    dataset: str
    schema: LabelSchema
    method: str
    styles: list[StyleSlice]
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. selection settings and timings

    def __len__(self) -> int:
        return len(self.styles)

    # --- checks ----------------------------------------------------------------------------------
    def require_labels(self, folder: str | Path | None = None) -> None:
        """Raise InputError if any style slice has no label map (generator training needs them)."""
        missing = [s for s in self.styles if s.label is None]
        if missing:
            where = Path(folder) / STYLES_JSON if folder is not None else None
            which = ", ".join(f"style {s.index} ({s.case_id} slice {s.slice})" for s in missing)
            raise InputError(
                where, f"style slices without a label map: {which}",
                "add label maps: re-run `styleseg pick-styles ... --labels-from MODEL` and check the "
                "predicted labels, or draw them and save as style_KK_label.nii.gz (then set \"label\" "
                "in styles.json)")

    # --- save ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        styles = []
        for s in self.styles:
            styles.append({
                "index": int(s.index), "case_id": s.case_id, "slice": int(s.slice),
                "image": image_name(s.index),
                "label": None if s.label is None else label_name(s.index),
                "label_source": s.label_source if s.label is not None else None,
                "cluster_size": int(s.cluster_size), "tags": dict(s.tags), "why": s.why,
            })
        return {"format_version": FORMAT_VERSION, "dataset": str(self.dataset),
                "schema": self.schema.to_labels_dict(), "method": self.method, "styles": styles,
                **({"extras": self.extras} if self.extras else {})}

    def save(self, folder: str | Path, overwrite: bool = False,
             extra_files: Mapping[str, bytes] | None = None) -> Path:
        """Write the style set into ``folder`` atomically (built beside it, renamed into place).

        ``extra_files`` (name -> bytes, e.g. ``contact_sheet.png``) are written into the same folder
        before the rename. When overwriting, files of the old folder that are not style files (e.g. a
        contact sheet) are carried over unless ``extra_files`` replaces them.
        """
        folder = Path(folder)
        idx = [s.index for s in self.styles]
        if len(set(idx)) != len(idx):
            raise ValueError(f"duplicate style indices {idx}")
        for s in self.styles:
            if s.label is not None:
                self.schema.check_label_values(s.label.array, f"style {s.index} label ({s.case_id} slice {s.slice})")
        if folder.exists() and not overwrite:
            raise InputError(folder, "output already exists", "choose another --out or remove it first")
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            if folder.exists():
                for p in folder.iterdir():
                    keep = p.is_file() and p.name != STYLES_JSON and not p.name.startswith("style_")
                    if keep and p.name not in (extra_files or {}):
                        shutil.copy2(p, tmp / p.name)
            for s in self.styles:
                img = s.image.array
                if np.issubdtype(img.dtype, np.floating):
                    img = np.clip(np.rint(img), -32768, 32767)
                write_nifti(s.image.with_array(img.astype(np.int16)), tmp / image_name(s.index))
                if s.label is not None:
                    write_nifti(s.label.with_array(s.label.array.astype(np.uint8)), tmp / label_name(s.index))
            for name, data in (extra_files or {}).items():
                if Path(name).name != name:
                    raise ValueError(f"extra file name must be a plain file name, got {name!r}")
                (tmp / name).write_bytes(data)
            write_json(tmp / STYLES_JSON, self.to_json())
        log.info("wrote style set with %d styles to %s", len(self.styles), folder)
        return folder

    # --- load ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path) -> StyleSet:
        """Read and validate a style-set folder; every error names the file and the fix."""
        folder = Path(folder)
        js = folder / STYLES_JSON
        if not folder.is_dir():
            raise InputError(folder, "style-set folder does not exist", "create it with `styleseg pick-styles`")
        if not js.exists():
            raise InputError(js, "no styles.json: this folder is not a style set",
                             "create it with `styleseg pick-styles`")
        try:
            d = json.loads(js.read_text())
        except json.JSONDecodeError as e:
            raise InputError(js, f"invalid JSON ({e})", "repair it or re-run `styleseg pick-styles`") from e
        if not isinstance(d, dict):
            raise InputError(js, "top level is not a JSON object")
        ver = d.get("format_version")
        if ver not in SUPPORTED_VERSIONS:
            raise InputError(js, f"unknown format_version {ver!r} (this styleseg reads {list(SUPPORTED_VERSIONS)})",
                             "re-create the style set with this styleseg version, or upgrade styleseg")
        for key in ("schema", "styles"):
            if key not in d:
                raise InputError(js, f"missing required key {key!r}")
        try:
            schema = LabelSchema.from_labels_dict(d["schema"])
        except (ValueError, TypeError, AttributeError) as e:
            raise InputError(js, f"invalid schema: {e}") from e
        styles: list[StyleSlice] = []
        seen: set[int] = set()
        for i, e in enumerate(d["styles"]):
            styles.append(_load_style(folder, js, i, e, schema, seen))
        return cls(dataset=str(d.get("dataset", "")), schema=schema, method=str(d.get("method", "")),
                   styles=styles, extras=dict(d.get("extras", {})))


def _load_style(folder: Path, js: Path, i: int, e: Any, schema: LabelSchema, seen: set[int]) -> StyleSlice:
    if not isinstance(e, dict):
        raise InputError(js, f"styles[{i}] is not an object")
    for key in ("index", "case_id", "slice", "image"):
        if key not in e:
            raise InputError(js, f"styles[{i}] is missing required key {key!r}")
    index = int(e["index"])
    if index in seen:
        raise InputError(js, f"styles[{i}]: duplicate style index {index}")
    seen.add(index)
    ip = folder / str(e["image"])
    if not ip.exists():
        raise InputError(ip, f"style {index} image file is missing (named in {js.name})",
                         "restore the file or re-run `styleseg pick-styles`")
    image = read_nifti(ip)
    if image.shape[0] != 1:
        raise InputError(ip, f"style image must be a single slice, got shape (z,y,x)={image.shape}",
                         "save one axial slice per style image")
    label = None
    src = e.get("label_source")
    if e.get("label"):
        lp = folder / str(e["label"])
        if not lp.exists():
            raise InputError(lp, f"style {index} label file is missing (named in {js.name})",
                             "restore it, or set \"label\": null in styles.json")
        label = read_nifti(lp)
        check_same_grid(image, label, lp)
        label.array = np.asarray(label.array)
        if np.issubdtype(label.array.dtype, np.floating) and not np.all(label.array == np.round(label.array)):
            raise InputError(lp, "label map holds non-integer values", "save labels as integers (uint8)")
        schema.check_label_values(label.array, str(lp))
        label.array = label.array.astype(np.uint8)
    return StyleSlice(index=index, case_id=str(e["case_id"]), slice=int(e["slice"]), image=image, label=label,
                      label_source=src if label is not None else None, cluster_size=int(e.get("cluster_size", 1)),
                      tags=dict(e.get("tags") or {}), why=str(e.get("why", "")))


def slice_volume(vol: Volume, k: int) -> Volume:
    """Slice ``k`` of a volume as a 1-slice Volume with its physical geometry (origin moved to it)."""
    if not 0 <= k < vol.shape[0]:
        raise IndexError(f"slice {k} out of range 0..{vol.shape[0] - 1}")
    origin = vol.index_to_physical(np.array([[k, 0, 0]]))[0]
    return Volume(np.asarray(vol.array[k:k + 1]).copy(), vol.spacing, tuple(origin), vol.direction, dict(vol.tags))
