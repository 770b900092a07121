"""Dataset folders in nnU-Net v2 raw layout, with styleseg's per-case extras.

Layout::

    DATASET/
      dataset.json              nnU-Net fields + "styleseg": {format_version, meta, cases}
      imagesTr/<case>_0000.nii.gz
      labelsTr/<case>.nii.gz    training labels (nnU-Net reads these)
      labelsRef/<case>.nii.gz   evaluation-only labels (e.g. a target domain's ground truth); never
                                used for training, and invisible to nnU-Net

``dataset.json["styleseg"]["cases"][case]`` holds, per case: ``annotated`` (structures that were
annotated: the others are *unknown*, not background), ``derived`` (structures computed rather than
drawn, e.g. body), ``labels`` ("labelsTr", "labelsRef" or null) and free extras such as
``source_files``, ``scanner`` (DICOM tags), ``split``, ``protocol`` or ``provenance``.

nnU-Net v2 trains on every image in ``imagesTr`` and wants a ``labelsTr`` file for each, ``numTraining`` of
them. Where a dataset also holds unannotated cases or cases with labelsRef labels, ``dataset.json`` lists its
training cases explicitly under nnU-Net v2's ``dataset`` key (:func:`nnunet_training_fields`), so nnU-Net
trains on exactly the labelsTr cases and the folder stays one dataset for styleseg.

A dataset is written through :class:`DatasetWriter`, which builds it in a temporary folder and renames
it into place only when every case was written, so a failed import leaves nothing half-written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from styleseg import __version__
from styleseg.errors import InputError
from styleseg.io.atomic import atomic_dir, clean_stale, write_json
from styleseg.io.dataset_json import (
    LABEL_DIRS,
    check_case_id,
    inside_root,
    parse_dataset_json,
    safe_case_id,
)
from styleseg.io.volume import Volume, check_same_grid, read_nifti, write_nifti
from styleseg.labels import LabelSchema

DATASET_JSON = "dataset.json"
FILE_ENDING = ".nii.gz"
FORMAT_VERSION = 1
#: the case extra of a re-imaged copy kept beside its original in one dataset (the oracle's and physics
#: randomisation's training data): the original's case id. Such a copy is another texture of the same acquisition,
#: like a restyled case, so training validates on the original only (:func:`styleseg.seg.data.split_cases`).
REIMAGED_FROM = "reimaged_from"


@dataclass
class CaseRecord:
    """One case of a dataset: its id, which labels it has, and its extras."""

    case_id: str
    labels: str | None = None  # "labelsTr", "labelsRef" or None (unannotated)
    annotated: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def patient(self) -> str:
        """The patient this case shows: every split (training/validation, style pool/test) keeps a patient on
        one side. Simulated and re-imaged cases record it as ``patient``; augmented cases as
        ``provenance.source_case`` (the generated copies of one source case); otherwise the case is its own
        patient."""
        ex = self.extras
        for key in ("patient", "source_case"):
            if ex.get(key):
                return str(ex[key])
        prov = ex.get("provenance")
        if isinstance(prov, Mapping) and prov.get("source_case"):
            return str(prov["source_case"])
        return self.case_id

    @property
    def reimaged_from(self) -> str | None:
        """The case of the same dataset this one re-images (the oracle's and physics randomisation's copies of
        a source case), else None."""
        v = self.extras.get(REIMAGED_FROM)
        return str(v) if v else None

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "annotated": list(self.annotated), "derived": list(self.derived),
                **self.extras}

    @classmethod
    def from_json(cls, case_id: str, d: Mapping[str, Any]) -> CaseRecord:
        d = dict(d)
        return cls(case_id, d.pop("labels", None), tuple(d.pop("annotated", ())), tuple(d.pop("derived", ())),
                   d)


def nnunet_training_fields(records: Mapping[str, CaseRecord], file_ending: str = FILE_ENDING) -> dict[str, Any]:
    """The dataset.json fields that tell nnU-Net v2 which cases it trains on.

    ``numTraining`` counts the cases with labelsTr labels (nnU-Net's verify_dataset_integrity asserts it).
    When some case in imagesTr has no labelsTr label (unannotated, or evaluation labels in labelsRef),
    nnU-Net's folder scan would take it as a training case with a missing label, so the training cases are
    listed under nnU-Net v2's ``dataset`` key (case -> ``images`` and ``label``, relative to the dataset
    folder): nnU-Net then reads exactly those and never a labelsRef label.
    """
    train = [cid for cid, r in records.items() if r.labels == "labelsTr"]
    fields: dict[str, Any] = {"numTraining": len(train)}
    if len(train) < len(records):
        fields["dataset"] = {cid: {"images": [f"imagesTr/{cid}_0000{file_ending}"],
                                   "label": f"labelsTr/{cid}{file_ending}"} for cid in train}
    return fields


class Dataset:
    """A dataset folder, read lazily: metadata on open, volumes on request."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        js = self.root / DATASET_JSON
        if not self.root.exists():
            raise InputError(self.root, "dataset folder does not exist", "check the path, or create it "
                             "with `styleseg import`")
        if not js.exists():
            raise InputError(js, "no dataset.json: this folder is not a styleseg/nnU-Net dataset",
                             "create it with `styleseg import` or `styleseg make-benchmark`")
        try:
            self.json: dict[str, Any] = json.loads(js.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(js, f"invalid JSON ({e})", "repair or re-create the dataset") from e
        except OSError as e:
            raise InputError(js, f"cannot read: {e.strerror or e}", "check the file and its permissions") from e
        self.file_ending: str
        self.schema: LabelSchema
        self.file_ending, self.schema, self.meta, cases = parse_dataset_json(self.json, js)
        if cases is None:  # a plain nnU-Net dataset: discover cases from the files
            cases = {}
            for p in sorted((self.root / "imagesTr").glob(f"*_0000{self.file_ending}")):
                cid = p.name[: -len(f"_0000{self.file_ending}")]
                check_case_id(cid, p)
                lab = "labelsTr" if (self.root / "labelsTr" / f"{cid}{self.file_ending}").exists() else None
                cases[cid] = {"labels": lab, "annotated": list(self.schema.names) if lab else []}
        self.cases: list[CaseRecord] = [CaseRecord.from_json(k, v) for k, v in cases.items()]
        self._by_id = {c.case_id: c for c in self.cases}
        for c in self.cases:  # ids and folders are safe by now; this guards the layout itself
            for path in (self.image_path(c.case_id), self.label_path(c.case_id)):
                if path is not None and not inside_root(self.root, path):
                    raise InputError(js, f"case {c.case_id!r}: {path} is outside the dataset folder")

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[CaseRecord]:
        return iter(self.cases)

    @property
    def name(self) -> str:
        return str(self.json.get("name", self.root.name))

    def case(self, case_id: str) -> CaseRecord:
        if case_id not in self._by_id:
            raise InputError(self.root / DATASET_JSON, f"case {case_id!r} is not in this dataset",
                             "check the case id (`styleseg info` lists them)")
        return self._by_id[case_id]

    def image_path(self, case_id: str) -> Path:
        return self.root / "imagesTr" / f"{check_case_id(case_id, self.root / DATASET_JSON)}_0000{self.file_ending}"

    def label_path(self, case_id: str) -> Path | None:
        rec = self.case(case_id)
        return None if rec.labels is None else self.root / rec.labels / f"{case_id}{self.file_ending}"

    def existing_label(self, case_id: str) -> Path | None:
        """The label path of a case (None if unannotated), checked to exist."""
        p = self.label_path(case_id)
        if p is not None and not p.exists():
            raise InputError(p, f"case {case_id!r} is listed in dataset.json with labels in "
                             f"{self.case(case_id).labels}, but its label file is missing",
                             "restore the file, or re-create the dataset")
        return p

    def load_image(self, case_id: str) -> Volume:
        return read_nifti(self.existing_image(case_id), require_3d=True)

    def existing_image(self, case_id: str) -> Path:
        """The image path of a case, checked to exist (dataset.json may list a file that is gone)."""
        p = self.image_path(case_id)
        if not p.exists():
            raise InputError(p, f"case {case_id!r} is listed in dataset.json but its image is missing",
                             "restore the file, or re-create the dataset")
        return p

    def load_label(self, case_id: str, image: Volume | None = None) -> Volume | None:
        """The label volume of a case (None if unannotated); checked against ``image``'s grid if given."""
        p = self.existing_label(case_id)
        if p is None:
            return None
        lab = read_nifti(p, require_3d=True)
        lab.array = lab.array.astype(np.uint8, copy=False)
        self.schema.check_label_values(lab.array, str(p))
        if image is not None:
            check_same_grid(image, lab, p)
        return lab

    def annotated(self, case_id: str) -> tuple[str, ...]:
        return self.case(case_id).annotated

    def labelled_cases(self, role: str | None = "labelsTr") -> list[CaseRecord]:
        """Cases with labels of the given role ("labelsTr", "labelsRef"; None: either)."""
        return [c for c in self.cases if c.labels is not None and (role is None or c.labels == role)]


class DatasetWriter:
    """Write a dataset atomically: ``with DatasetWriter(out, ...) as w: w.add_case(...)``.

    On an exception inside the block nothing appears at ``out`` (and an existing ``out`` is kept).
    """

    def __init__(self, out: str | Path, name: str, schema: LabelSchema, description: str = "",
                 meta: Mapping[str, Any] | None = None, overwrite: bool = False):
        self.out = Path(out)
        self.name = name
        self.schema = schema
        self.description = description
        self.meta = dict(meta or {})
        self.overwrite = overwrite
        self.records: dict[str, CaseRecord] = {}
        self._ctx = None
        self.tmp: Path | None = None

    def __enter__(self) -> DatasetWriter:
        clean_stale(self.out)  # an interrupted earlier write of this dataset
        if self.out.exists() and not self.overwrite:
            raise InputError(self.out, "output already exists", "choose another --out or remove it first")
        self._ctx = atomic_dir(self.out, overwrite=self.overwrite)
        self.tmp = self._ctx.__enter__()
        (self.tmp / "imagesTr").mkdir()
        return self

    def __exit__(self, et, ev, tb) -> bool:
        assert self._ctx is not None and self.tmp is not None
        if et is None:
            try:
                if not self.records:
                    raise InputError(None, "no case was written, so no dataset was created",
                                     "check the inputs (is the folder empty?)")
                write_json(self.tmp / DATASET_JSON, self.dataset_json())
            except BaseException as e:  # the temporary folder goes, and errors name the final paths
                if not self._ctx.__exit__(type(e), e, e.__traceback__):
                    raise
                return True
        return bool(self._ctx.__exit__(et, ev, tb))

    def add_case(self, case_id: str, image: Volume, label: Volume | None = None,
                 annotated: Sequence[str] | None = None, derived: Sequence[str] = (),
                 label_role: str = "labelsTr", **extras: Any) -> CaseRecord:
        """Write one case. ``annotated`` defaults to the structures present in ``label``."""
        assert self.tmp is not None, "use DatasetWriter as a context manager"
        cid = safe_case_id(case_id)
        if cid in self.records:
            raise InputError(None, f"two cases get the case id {cid!r} (the second from {case_id!r})",
                             "rename one of them")
        if label_role not in LABEL_DIRS:
            raise ValueError(f"label_role must be one of {LABEL_DIRS}")
        img_arr = image.array
        if np.issubdtype(img_arr.dtype, np.floating):
            img_arr = np.clip(np.rint(img_arr), -32768, 32767).astype(np.int16)
        write_nifti(image.with_array(img_arr), self.tmp / "imagesTr" / f"{cid}_0000{FILE_ENDING}")
        role = None
        if label is not None:
            if not image.same_grid(label):
                check_same_grid(image, label, extras.get("label_source"))
            self.schema.check_label_values(label.array, extras.get("label_source"))
            (self.tmp / label_role).mkdir(exist_ok=True)
            write_nifti(label.with_array(label.array.astype(np.uint8)),
                        self.tmp / label_role / f"{cid}{FILE_ENDING}")
            role = label_role
            if annotated is None:
                present = {int(v) for v in np.unique(label.array)}
                annotated = [n for n, v in self.schema.structures if v in present]
        rec = CaseRecord(cid, role, tuple(annotated or ()), tuple(derived), dict(extras))
        self.records[cid] = rec
        return rec

    def dataset_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "channel_names": {"0": "CT"},
            "labels": self.schema.to_labels_dict(),
            **nnunet_training_fields(self.records),
            "file_ending": FILE_ENDING,
            "styleseg": {
                "format_version": FORMAT_VERSION,
                "styleseg_version": __version__,
                "meta": self.meta,
                "cases": {k: r.to_json() for k, r in self.records.items()},
            },
        }


def subset_dataset(src: str | Path, cases: Sequence[str], out: str | Path, name: str | None = None,
                   meta: Mapping[str, Any] | None = None, label_role: str | None = None,
                   overwrite: bool = False) -> Path:
    """Copy some cases of a dataset into a new dataset folder (atomically; files are copied as they are).

    ``label_role`` moves the labels to another folder: e.g. "labelsTr" turns a target domain's
    evaluation labels (labelsRef) into training labels for the oracle arm.
    """
    import shutil

    ds = Dataset(src)
    out = Path(out)
    if label_role is not None and label_role not in LABEL_DIRS:
        raise InputError(None, f"label_role {label_role!r} is not one of {', '.join(LABEL_DIRS)}")
    recs_in = [ds.case(cid) for cid in cases]  # every id known (and so safe) before anything is written
    clean_stale(out)
    if out.exists() and not overwrite:
        raise InputError(out, "output already exists", "choose another output or remove it first")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "imagesTr").mkdir()
        recs: dict[str, CaseRecord] = {}
        for rec in recs_in:
            cid = rec.case_id
            shutil.copy2(ds.existing_image(cid), tmp / "imagesTr" / ds.image_path(cid).name)
            role = rec.labels
            if rec.labels is not None:
                role = label_role or rec.labels
                (tmp / role).mkdir(exist_ok=True)
                shutil.copy2(ds.existing_label(cid), tmp / role / f"{cid}{ds.file_ending}")  # type: ignore[arg-type]
            recs[cid] = CaseRecord(cid, role, rec.annotated, rec.derived, dict(rec.extras))
        js = dict(ds.json)
        js["name"] = name or f"{ds.name}-subset"
        js.pop("dataset", None)  # the source's list of training cases is not this subset's
        js.update(nnunet_training_fields(recs, ds.file_ending))
        ext = dict(js.get("styleseg", {}))
        ext["meta"] = {**ds.meta, **dict(meta or {}), "subset_of": str(Path(src).resolve())}
        ext["cases"] = {k: r.to_json() for k, r in recs.items()}
        ext.setdefault("format_version", FORMAT_VERSION)
        js["styleseg"] = ext
        write_json(tmp / DATASET_JSON, js)
    return out
