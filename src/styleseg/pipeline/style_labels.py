"""The human step of the job: label maps for the chosen style slices, written for correction and read back.

The generators need a label map for every style slice (Bhosale et al. 2023, sec. 2.3: the style slices are
annotated). On an unannotated target nobody has drawn them, so (``[job] style_labels``):

- ``"correct"``: the strongest source-only model predicted them (``pick_styles(labels_from=...)``);
  :func:`write_review` writes, per style ``KK``, into ``RUN/style_labels/``::

      style_KK_image.nii.gz       the style slice (1-slice HU volume with the slice's physical geometry)
      style_KK_predicted.nii.gz   the model's label map on that grid
      style_KK_predicted.dcm      the same as DICOM SEG referencing the original CT slice (DICOM inputs)
      style_KK_overlay.png        the slice and the prediction side by side
      README.txt, review.json     what to do; which picked style set these files belong to

  and the run stops. A person opens the original series (or the image) and the prediction in 3D Slicer or
  ITK-SNAP, corrects it, and saves it as ``style_KK_label.nii.gz`` in the same folder (accepting a prediction
  unchanged = copying ``style_KK_predicted.nii.gz`` to that name). The next ``styleseg run`` reads them.
- ``"given"``: the same folder and names without predictions: the person draws every map.
- ``"predicted"``: the predictions are used as they are (recorded as such).

A corrected file must be NIfTI, on the style slice's grid (the 1-slice grid of ``style_KK_image.nii.gz``, or
the whole case's grid, from which the style slice is taken), hold only label values of the schema and label
at least one structure; otherwise :func:`read_label` raises InputError naming the file. Their content (not the
file bytes: re-saving the same map changes nothing) enters the hash of the ``styles`` stage
(:func:`content_hash`), so a changed correction retrains the generators and nothing else does. Files of an
earlier picked style set are moved aside (``RUN/style_labels/old-<hash>/``), never deleted: they are a person's
work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.errors import InputError
from styleseg.io.atomic import atomic_path, write_json, write_text
from styleseg.io.dataset import Dataset
from styleseg.io.volume import Volume, read_nifti, write_nifti
from styleseg.labels import LabelSchema
from styleseg.style.styleset import StyleSet, StyleSlice

REVIEW_DIR = "style_labels"
REVIEW_JSON = "review.json"


def image_file(index: int) -> str:
    return f"style_{index:02d}_image.nii.gz"


def predicted_file(index: int) -> str:
    return f"style_{index:02d}_predicted.nii.gz"


def label_file(index: int) -> str:
    """The name a person saves a corrected (or drawn) label map under."""
    return f"style_{index:02d}_label.nii.gz"


def review_matches(folder: Path, picked_hash: str) -> bool:
    """Whether ``folder`` holds the review files of the picked style set with hash ``picked_hash``."""
    js = folder / REVIEW_JSON
    if not js.exists():
        return False
    try:
        return json.loads(js.read_text()).get("picked") == picked_hash
    except json.JSONDecodeError:
        return False


def write_review(picked: StyleSet, folder: Path, target: Dataset, mode: str, picked_hash: str) -> None:
    """Write the review folder for ``picked`` (see the module docstring); files of another picked set are
    moved to ``old-<their hash>/``."""
    if folder.exists():
        old = "unknown"
        try:
            old = json.loads((folder / REVIEW_JSON).read_text()).get("picked", old)
        except (OSError, json.JSONDecodeError):
            pass
        keep = [p for p in folder.iterdir() if p.is_file()]
        if keep:
            aside = folder / f"old-{old}"
            aside.mkdir(parents=True, exist_ok=True)
            for p in keep:
                shutil.move(str(p), aside / p.name)
    folder.mkdir(parents=True, exist_ok=True)
    for s in picked.styles:
        img = s.image.with_array(np.clip(np.rint(s.image.array), -32768, 32767).astype(np.int16))
        write_nifti(img, folder / image_file(s.index))
        if mode == "correct" and s.label is not None:
            write_nifti(s.label.with_array(s.label.array.astype(np.uint8)), folder / predicted_file(s.index))
            src = _dicom_slice(target, s)
            if src is not None:
                _write_slice_seg(s, picked.schema, src, folder / f"style_{s.index:02d}_predicted.dcm")
        _overlay_png(s, picked.schema, folder / f"style_{s.index:02d}_overlay.png")
    write_text(folder / "README.txt", instructions(folder, picked, mode))
    write_json(folder / REVIEW_JSON, {"picked": picked_hash, "mode": mode, "styles": [
        {"index": s.index, "case_id": s.case_id, "slice": s.slice, "image": image_file(s.index),
         "predicted": predicted_file(s.index) if mode == "correct" else None, "label": label_file(s.index),
         "source_file": _dicom_slice(target, s)} for s in picked.styles]})


def ensure_review(folder: Path, picked: StyleSet, target: Dataset, mode: str, picked_hash: str,
                  write: bool = True) -> bool:
    """True when ``folder`` holds the review files of this picked style set; else they are written (``write``)
    and False: the run must pause for the person."""
    if review_matches(folder, picked_hash):
        return True
    if write:
        write_review(picked, folder, target, mode, picked_hash)
    return False


def instructions(folder: Path, picked: StyleSet, mode: str) -> str:
    """What the person is asked to do (README.txt and the message of the paused run)."""
    which = "\n".join(f"  style {s.index}: case {s.case_id}, slice {s.slice} -> {folder / label_file(s.index)}"
                      for s in picked.styles)
    if mode == "given":
        how = ("Draw a label map for each style slice below (3D Slicer or ITK-SNAP: open "
               "style_KK_image.nii.gz, or the case's original series) and save it as NIfTI under the name shown.")
    else:
        how = ("The source-only model predicted a label map for each style slice below (style_KK_predicted.nii.gz; "
               "style_KK_predicted.dcm is the same as DICOM SEG on the original series; style_KK_overlay.png shows "
               "it). Open it with style_KK_image.nii.gz (or the original series) in 3D Slicer or ITK-SNAP, correct "
               "it, and save it as NIfTI under the name shown. To accept a prediction as it is, copy "
               "style_KK_predicted.nii.gz to style_KK_label.nii.gz.")
    return (f"{how}\nLabel values: {picked.schema.to_labels_dict()}.\n{which}\n"
            "Then run the same `styleseg run` command again: it continues from here.\n")


def _dicom_slice(target: Dataset, s: StyleSlice) -> str | None:
    """The original DICOM file of a style slice (its case was imported from DICOM and the file is still there)."""
    ex = target.case(s.case_id).extras
    files = ex.get("source_files")
    if ex.get("source") != "dicom" or not isinstance(files, list) or not 0 <= s.slice < len(files):
        return None
    return str(files[s.slice]) if Path(files[s.slice]).exists() else None


def _write_slice_seg(s: StyleSlice, schema: LabelSchema, source: str, out: Path) -> None:
    """The predicted label map of a style slice as a DICOM SEG referencing its one CT file."""
    from styleseg.io.dicom import read_header, slice_geometry
    from styleseg.io.rtstruct import write_seg

    h = read_header(Path(source))
    assert h is not None
    _, geom = slice_geometry([h])
    assert s.label is not None
    lab = Volume(np.asarray(s.label.array, np.uint8), geom["spacing"], geom["origin"], geom["direction"])
    write_seg(lab, schema, [source], out, algorithm="styleseg source-only model (to be corrected)")


def _overlay_png(s: StyleSlice, schema: LabelSchema, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ct = np.clip((s.hu - (40.0 - 200.0)) / 400.0, 0, 1)
    panels = [("CT W400/L40", np.repeat(ct[..., None], 3, axis=2))]
    if s.label_map is not None:
        rgb = np.repeat(ct[..., None], 3, axis=2)
        for name, v in schema.structures:
            if name == "body":
                continue
            m = s.label_map == v
            rgb[m] = 0.55 * rgb[m] + 0.45 * np.asarray(schema.colour(name), float) / 255.0
        panels.append(("predicted label map", rgb))
    fig = Figure(figsize=(4.0 * len(panels), 4.4))
    FigureCanvasAgg(fig)
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img, interpolation="nearest", aspect=s.image.spacing[1] / s.image.spacing[0])
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"style {s.index}: {s.case_id} slice {s.slice}", fontsize=9)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def missing_labels(folder: Path, picked: StyleSet) -> list[StyleSlice]:
    """Style slices whose label file is not in ``folder`` yet."""
    return [s for s in picked.styles if not (folder / label_file(s.index)).exists()]


def read_label(path: Path, s: StyleSlice, case_grid: Volume | None, schema: LabelSchema) -> np.ndarray:
    """A person's label map of style slice ``s`` as a (H, W) uint8 array, or InputError naming ``path``.

    Accepted grids: the style slice's own (1 slice) or the whole case's (``case_grid``; the style slice is
    taken from it). Values must be labels of ``schema``; at least one structure must be labelled."""
    try:
        vol = read_nifti(path)
    except InputError as e:
        raise InputError(path, f"not a readable NIfTI label map ({e.problem})",
                         f"save the label map as NIfTI (.nii.gz) under the name {path.name}") from e
    arr = np.asarray(vol.array)
    if _same_slice_grid(vol, s.image):
        arr2 = arr[0]
    elif case_grid is not None and vol.same_grid(case_grid, tol=1e-2):
        arr2 = arr[s.slice]
    else:
        grids = s.image.grid_description() + (f", or the case's {case_grid.grid_description()}" if case_grid else "")
        raise InputError(path, f"label map grid {vol.grid_description()} is not the style slice's grid ({grids})",
                         f"save the label on {image_file(s.index)} (or on the case's series), without resampling")
    if np.issubdtype(arr2.dtype, np.floating) and not np.all(arr2 == np.round(arr2)):
        raise InputError(path, "label map holds non-integer values", "save labels as integers (uint8)")
    bad = sorted(set(np.unique(arr2).astype(int).tolist()) - set(schema.values) - {0})
    if bad:
        raise InputError(path, f"label values {bad} are not in the label schema {schema.to_labels_dict()}",
                         "relabel the segments with the values listed (Slicer: segment names or a colour table)")
    if not np.any(arr2):
        raise InputError(path, f"label map of style {s.index} ({s.case_id} slice {s.slice}) is empty (all "
                         "background)", "label the structures on the style slice, or copy the prediction")
    return arr2.astype(np.uint8)


def _same_slice_grid(a: Volume, b: Volume) -> bool:
    """Same 1-slice grid: shape, in-plane spacing, origin and direction (a single slice's z spacing is moot)."""
    return (a.shape == b.shape and np.allclose(a.spacing[:2], b.spacing[:2], atol=1e-2)
            and np.allclose(a.origin, b.origin, atol=1e-2) and np.allclose(a.direction, b.direction, atol=1e-3))


def content_hash(labels: Mapping[int, np.ndarray]) -> str:
    """SHA-256 (16 hex digits) of the label maps' values and shapes, by style index: what the stage hashes."""
    h = hashlib.sha256()
    for k in sorted(labels):
        a = np.ascontiguousarray(labels[k], np.uint8)
        h.update(f"{k}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def read_labels(folder: Path, picked: StyleSet, target: Dataset) -> dict[int, np.ndarray]:
    """Every style slice's label map from ``folder`` (validated; see :func:`read_label`)."""
    out = {}
    for s in picked.styles:
        case = target.load_image(s.case_id)
        grid = case.with_array(np.broadcast_to(np.uint8(0), case.shape))
        out[s.index] = read_label(folder / label_file(s.index), s, grid, picked.schema)
    return out


def labelled_styles(picked: StyleSet, labels: Mapping[int, np.ndarray] | None, source: str,
                    files: Sequence[str] = ()) -> list[StyleSlice]:
    """The picked styles with ``labels`` (None: keep the predicted ones) and their provenance ``source``."""
    out = []
    for i, s in enumerate(picked.styles):
        lab = s.label if labels is None else s.image.with_array(labels[s.index][None])
        if lab is None:
            raise InputError(None, f"style {s.index} ({s.case_id} slice {s.slice}) has no label map",
                             "use style_labels = \"correct\" or \"given\"")
        where = f" ({files[i]})" if files else ""
        out.append(StyleSlice(s.index, s.case_id, s.slice, s.image, lab, f"{source}{where}", s.cluster_size,
                              dict(s.tags), s.why))
    return out


def absent_structures(s: StyleSlice, schema: LabelSchema, min_px: int = 20) -> list[str]:
    """Structures of ``schema`` (the catch-all ``body`` aside) with fewer than ``min_px`` pixels in the style
    slice's label map: its generator learns no texture for them. A slice outside the chest (an abdominal slice of
    a screening series) has no lungs."""
    if s.label is None:
        return []
    arr = np.asarray(s.label.array)
    return [n for n, v in schema.structures if n != "body" and int((arr == v).sum()) < min_px]


def absent_warning(s: StyleSlice, absent: Sequence[str]) -> str:
    return (f"style {s.index} ({s.case_id}, slice {s.slice}): its label map has no {', '.join(absent)}, so its "
            f"generator learns no texture for them; if the slice is outside the chest, name chest slices with "
            f"style_slices = [\"CASE:SLICE\", ...] in the experiment file")


def provenance(styles: Sequence[StyleSlice], mode: str, schema: LabelSchema | None = None) -> dict[str, Any]:
    """What the report states about the style label maps (RUN/job/style_labels.json), with the structures each
    label map lacks when ``schema`` is given."""
    return {"mode": mode, "styles": [{"index": s.index, "case_id": s.case_id, "slice": s.slice,
                                      "label_source": s.label_source,
                                      **({"absent": absent_structures(s, schema)} if schema is not None else {})}
                                     for s in styles]}
