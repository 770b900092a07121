"""NIfTI sources of an import: images paired with their label files by name, and per-case annotation lists.

A NIfTI image ``X_ct.nii.gz`` pairs with ``X_labels.nii.gz`` (and the other conventions of
:data:`NIFTI_PAIRS`, nnU-Net's ``imagesTr/X_0000.nii.gz`` + ``labelsTr/X.nii.gz`` included); a ``cases.json``
beside the images lists the structures each case annotated (partial labels: the others are unknown).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from styleseg.errors import InputError
from styleseg.io.volume import is_nifti
from styleseg.labels import LabelSchema

#: (image suffix, label suffix) naming conventions for NIfTI pairs, tried in order.
NIFTI_PAIRS = (("_ct", "_labels"), ("_ct", "_label"), ("_image", "_label"), ("_img", "_seg"), ("_0000", ""))
LABEL_SUFFIXES = ("_labels", "_label", "_seg", "_mask")


@dataclass
class NiftiCase:
    """One NIfTI case of an import: its id, image, label file (None: unlabelled) and annotated structures."""

    case_id: str
    image: Path
    label: Path | None
    annotated: list[str] | None = None


def _strip_nii(name: str) -> str:
    return name[:-7] if name.lower().endswith(".nii.gz") else name[:-4]


def strip_nii(name: str) -> str:
    return name[:-7] if name.lower().endswith(".nii.gz") else name[:-4]


def load_cases_json(path: str | Path) -> tuple[dict[str, list[str]], dict[str, int] | None]:
    """Per-case annotated structures (and the file's label values) from a cases.json.

    Accepts ``{"labels": {...}, "cases": [{"id": ..., "annotated": [...]}, ...]}`` (../shared/data/nsclc)
    or ``{"cases": {"ID": {"annotated": [...]}}}``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "cases JSON does not exist", "check the --cases-json path")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON ({e})") from e
    cases = data.get("cases", {})
    items = cases.items() if isinstance(cases, dict) else ((c.get("id"), c) for c in cases)
    out = {str(cid): list(c.get("annotated", [])) for cid, c in items if cid is not None}
    labels = data.get("labels")
    return out, ({str(k): int(v) for k, v in labels.items()} if isinstance(labels, dict) else None)


def label_for(image: Path) -> tuple[str, Path | None]:
    """Case id and label file of a NIfTI image, by the NIFTI_PAIRS naming conventions (None: unlabelled)."""
    stem = strip_nii(image.name)
    for img_sfx, lab_sfx in NIFTI_PAIRS:
        if img_sfx and stem.endswith(img_sfx):
            base = stem[: -len(img_sfx)]
            folder = image.parent.parent / "labelsTr" if lab_sfx == "" else image.parent
            for ext in (".nii.gz", ".nii"):
                if (folder / f"{base}{lab_sfx}{ext}").is_file():
                    return base, folder / f"{base}{lab_sfx}{ext}"
            return base, None
    for sfx in LABEL_SUFFIXES:
        for ext in (".nii.gz", ".nii"):
            if (image.parent / f"{stem}{sfx}{ext}").is_file():
                return stem, image.parent / f"{stem}{sfx}{ext}"
    return stem, None


def find_nifti(files: Sequence[Path], pairs: list[NiftiCase]) -> set[Path]:
    """Append a case per NIfTI image (paired with its label by name); return the files used."""
    claimed: set[Path] = set()
    for f in files:
        stem = strip_nii(f.name)
        if not is_nifti(f) or stem.endswith(LABEL_SUFFIXES) or f.parent.name in ("labelsTr", "labelsTs", "labelsRef"):
            continue
        cid, lab = label_for(f)
        pairs.append(NiftiCase(cid, f, lab))
        claimed.update({f} | ({lab} if lab else set()))
    claimed.update(f for f in files if is_nifti(f))  # stray label files are not "ignored" noise either
    return claimed


def apply_cases_json(pairs: Sequence[NiftiCase], cases_json: str | Path | None, schema: LabelSchema,
                     ) -> dict[int, int] | None:
    """Set each pair's annotated structures from ``cases_json`` (default: a cases.json beside the images) and
    return the label-value remapping the file implies ({file value: schema value}; None when it names none)."""
    remap: dict[int, int] | None = None
    jsons = [Path(cases_json)] if cases_json else sorted({c.image.parent / "cases.json" for c in pairs
                                                        if (c.image.parent / "cases.json").exists()})
    for jp in jsons:
        ann, labels = load_cases_json(jp)
        if labels:
            missing = sorted(set(labels) - set(schema.names))
            if missing:
                raise InputError(jp, f"label names {missing} are not in the label schema ({', '.join(schema.names)})")
            remap = {v: schema.value(k) for k, v in labels.items()}
        for c in pairs:
            if c.case_id in ann and c.label is not None:
                c.annotated = ann[c.case_id]
    return remap
