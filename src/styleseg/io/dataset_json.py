"""dataset.json is input: its case ids and label folders become paths, so they are checked first.

A case id names files (``imagesTr/<id>_0000.nii.gz``, ``<labels>/<id>.nii.gz``, a prediction
``OUT/<id>.nii.gz``), so an id such as ``../../../X`` would read or write outside the dataset or the
output folder; a label folder such as ``../../etc`` would read from anywhere. :func:`parse_dataset_json`
checks every case id (:func:`case_id_problem`), label folder (:data:`LABEL_DIRS`), structure list and
the types of the file's fields before a dataset is used, and raises InputError naming dataset.json and
the offending case. :func:`safe_case_id` makes ids from file names and PatientIDs that pass that check.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from styleseg.errors import InputError
from styleseg.labels import LabelSchema

LABEL_DIRS = ("labelsTr", "labelsRef")
FILE_ENDINGS = (".nii.gz", ".nii")
#: longest case id (UTF-8 bytes): "<id>_0000.nii.gz" and its temporaries stay within the 255-byte name limit
MAX_CASE_ID_BYTES = 200
_SAFE = re.compile(r"[^\w.-]+")  # \w: letters and digits of every script, and "_"
_SAFE_ID = re.compile(r"[\w.-]+")


def safe_case_id(text: str) -> str:
    """A file-system-safe case identifier: letters and digits of any script, '.', '_', '-'.

    Other characters become '_' ("пациент 1" -> "пациент_1"); the text is NFC-normalised first, so one
    name typed in two Unicode forms is one id. Names with nothing usable left ("😀") or longer than
    :data:`MAX_CASE_ID_BYTES` get a short hash of the full name, so distinct names stay distinct.
    Different names can still meet ("a b" and "a_b"): callers that name cases check for that.
    """
    text = unicodedata.normalize("NFC", text)
    s = _SAFE.sub("_", text.strip()).strip("._")
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    if not s:
        return f"case-{digest}"
    if len(s.encode()) > MAX_CASE_ID_BYTES:
        s = s.encode()[: MAX_CASE_ID_BYTES - 11].decode("utf-8", "ignore").rstrip("._") + "-" + digest
    return s


def case_id_problem(cid: object) -> str | None:
    """Why ``cid`` cannot name a case's files (None if it can): ids come from dataset.json, which is input."""
    if not isinstance(cid, str):
        return f"case id {cid!r} is not a string"
    if not cid or cid.startswith(".") or not _SAFE_ID.fullmatch(cid):
        return (f"unsafe case id {cid!r}: a case id is letters, digits, '.', '_' and '-', and does not start "
                "with '.' (no path separators, no '..')")
    if len(cid.encode()) > MAX_CASE_ID_BYTES:
        return f"case id {cid[:60]!r}... is {len(cid.encode())} bytes long (at most {MAX_CASE_ID_BYTES})"
    return None


def check_case_id(cid: object, where: str | Path | None = None) -> str:
    """Return ``cid`` if it is a safe case id, else raise InputError naming ``where``."""
    problem = case_id_problem(cid)
    if problem is not None:
        raise InputError(where, problem, "rename the case (styleseg import makes safe ids) or re-create the dataset")
    return cid  # type: ignore[return-value]


_REPAIR = "repair dataset.json, or re-create the dataset with `styleseg import`"


def _json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words ("a list", "an object", "null")."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def inside_root(root: Path, p: Path) -> bool:
    """Lexically inside ``root`` (symlinks a user made inside the dataset are followed on purpose)."""
    r, q = os.path.normpath(root), os.path.normpath(p)
    return os.path.commonpath([r, q]) == r


def _parse_labels(data: dict[str, Any], bad: Any) -> tuple[str, LabelSchema]:
    """file_ending and the label schema of a dataset.json object."""
    for key in ("labels", "file_ending"):
        if key not in data:
            raise bad(f"missing required key {key!r}")
    fe = data["file_ending"]
    if fe not in FILE_ENDINGS:
        raise bad(f"file_ending {fe!r} is not supported (styleseg reads {' and '.join(map(repr, FILE_ENDINGS))})")
    labels = data["labels"]
    if not isinstance(labels, dict):
        raise bad("'labels' must map structure names to label values (e.g. {\"background\": 0, \"heart\": 3}), "
                  f"not {_json_kind(labels)}")
    for k, v in labels.items():
        if isinstance(v, bool) or not isinstance(v, int):
            extra = " (region-based labels are not supported)" if isinstance(v, list) else ""
            raise bad(f"'labels': the value of {k!r} is {v!r}, not an integer{extra}")
    try:
        return fe, LabelSchema.from_labels_dict(labels)
    except ValueError as e:
        raise bad(f"'labels': {e}") from e


def _check_case_entry(cid: Any, entry: Any, schema: LabelSchema, js: Path, bad: Any) -> None:
    """One entry of styleseg.cases: a safe id, a known label folder, lists of the schema's structure names."""
    problem = case_id_problem(cid)
    if problem is not None:
        raise InputError(js, problem, _REPAIR)
    if not isinstance(entry, dict):
        raise bad(f"case {cid!r}: the entry must be an object, not {_json_kind(entry)}")
    role = entry.get("labels")
    if role is not None and (not isinstance(role, str) or role not in LABEL_DIRS):
        raise bad(f"case {cid!r}: labels folder {role!r} is not one of {', '.join(LABEL_DIRS)} (or null)")
    for key in ("annotated", "derived"):
        names = entry.get(key, [])
        if not isinstance(names, list):
            raise bad(f"case {cid!r}: {key!r} must be a list of structure names, not {_json_kind(names)}")
        for n in names:
            if not isinstance(n, str):
                raise bad(f"case {cid!r}: {key!r} holds {n!r}, not a structure name")
            if n not in schema.names:
                raise bad(f"case {cid!r}: {key!r} names {n!r}, which is not in 'labels' ({', '.join(schema.names)})")


def parse_dataset_json(data: Any, js: Path) -> tuple[str, LabelSchema, dict[str, Any], dict[str, Any] | None]:
    """Check dataset.json's structure and every case entry; (file_ending, schema, meta, cases or None).

    dataset.json is input like any other: a case id or label folder read from it becomes a path, so
    each must be safe before anything is read or written.
    """
    def bad(problem: str) -> InputError:
        return InputError(js, problem, _REPAIR)

    if not isinstance(data, dict):
        raise bad(f"must hold a JSON object, not {_json_kind(data)}")
    fe, schema = _parse_labels(data, bad)
    ext = data.get("styleseg", {})
    if not isinstance(ext, dict):
        raise bad(f"'styleseg' must be an object, not {_json_kind(ext)}")
    meta = ext.get("meta", {})
    if not isinstance(meta, dict):
        raise bad(f"'meta' (in 'styleseg') must be an object, not {_json_kind(meta)}")
    cases = ext.get("cases")
    if cases is None:
        return fe, schema, dict(meta), None
    if not isinstance(cases, dict):
        raise bad(f"'cases' (in 'styleseg') must map case ids to objects, not {_json_kind(cases)}")
    for cid, entry in cases.items():
        _check_case_entry(cid, entry, schema, js, bad)
    return fe, schema, dict(meta), cases
