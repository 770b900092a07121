"""Helpers for the reliability tests: tiny valid inputs, and one way to run a command that must fail.

:func:`expect_error` runs a ``styleseg`` command through Typer's CliRunner and checks the user-facing
contract of issue #16: exit status 2, exactly one line ``error: <file>: <what> (fix: <how>)`` on stderr,
no traceback. When ``STYLESEG_RELIABILITY_ROWS`` names a file, each checked case is appended to it as a
JSON line (input, command, exit code, message, what is left on disk); ``make_reliability_table.py``
turns those lines into the table of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROWS_ENV = "STYLESEG_RELIABILITY_ROWS"
ERROR_LINE = re.compile(r"^error: .+$")


def body_ct(nz: int = 3, size: int = 64, hu_body: float = 40.0, seed: int = 0) -> np.ndarray:
    """A plausible CT in HU (int16): air (-1000) around a soft-tissue block with two lungs in it."""
    rng = np.random.default_rng(seed)
    hu = np.full((nz, size, size), -1000.0)
    q = size // 8
    hu[:, q:-q, q:-q] = hu_body
    hu[:, 2 * q:5 * q, 2 * q:3 * q + q // 2] = -800.0
    hu[:, 2 * q:5 * q, 5 * q - q // 2:6 * q] = -800.0
    return np.rint(hu + rng.normal(0, 10, hu.shape)).astype(np.int16)


def write_ct_nifti(path: Path, hu: np.ndarray | None = None, spacing: tuple[float, float, float] = (5.0, 5.0, 5.0),
                   label: bool = False) -> Path:
    """Write a CT NIfTI (default :func:`body_ct`; 5 mm pixels, so 64 px are a 320 mm field of view) and,
    with ``label``, a matching ``*_labels.nii.gz`` with the lungs drawn."""
    from styleseg.io.volume import Volume, write_nifti

    hu = body_ct() if hu is None else hu
    vol = Volume(hu, spacing)
    write_nifti(vol, path)
    if label:
        lab = np.zeros(hu.shape, np.uint8)
        lab[hu < -500] = 1
        lab[..., : hu.shape[-1] // 8] = 0
        lab[..., -(hu.shape[-1] // 8):] = 0
        name = path.name.replace("_ct.nii", "_labels.nii")
        write_nifti(vol.with_array(lab), path.with_name(name))
    return path


def write_dataset(root: Path, cases: dict, labels: dict | None = None, file_ending: str = ".nii.gz",
                  images: Sequence[str] = ()) -> Path:
    """A dataset folder with a hand-written dataset.json (``cases`` goes to styleseg.cases verbatim) and
    valid image files for the case ids in ``images``."""
    root.mkdir(parents=True, exist_ok=True)
    js = {"name": root.name, "channel_names": {"0": "CT"},
          "labels": labels if labels is not None else {"background": 0, "lung_left": 1, "heart": 3},
          "file_ending": file_ending, "numTraining": len(cases),
          "styleseg": {"format_version": 1, "meta": {}, "cases": cases}}
    (root / "dataset.json").write_text(json.dumps(js))
    for cid in images:
        write_ct_nifti(root / "imagesTr" / f"{cid}_0000{file_ending}")
    return root


def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (relative, sorted), hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def expect_error(args: Sequence[str], *, input: str | None, contains: Sequence[str], left: str,
                 tmp: Path | None = None) -> str:
    """Run ``styleseg ARGS``; assert exit 2, one ``error:`` line on stderr naming ``contains``, no traceback.

    ``input`` (what was malformed) and ``left`` (what the test asserts is left on disk) describe the row
    for docs/reliability.md (``input=None``: no row); ``tmp`` is replaced by ``TMP`` in the recorded
    command and message.
    Returns the error line.
    """
    from typer.testing import CliRunner

    from styleseg.cli import app

    r = CliRunner().invoke(app, list(args))
    err = r.stderr
    assert r.exit_code == 2, f"exit {r.exit_code}, stdout={r.stdout!r}, stderr={err!r}, exc={r.exception!r}"
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), f"not one error line: {err!r}"
    line = lines[0]
    for s in contains:
        assert s in line, f"{s!r} not in {line!r}"
    if input is not None:
        record(input, "styleseg " + " ".join(args), r.exit_code, line, left, tmp)
    return line


def record(input: str, command: str, exit_code: int, message: str, left: str, tmp: Path | None = None) -> None:
    """Append one row for docs/reliability.md (only when STYLESEG_RELIABILITY_ROWS is set)."""
    dest = os.environ.get(ROWS_ENV)
    if not dest:
        return
    if tmp is not None:
        command = command.replace(str(tmp), "TMP")
        message = message.replace(str(tmp), "TMP")
    # folders of module-scoped fixtures (pytest's base temp) read as DATA: the table must not depend on the run
    base = re.compile(r"/[^ ]*/pytest-of-[^/ ]+/pytest-\d+/[^/ ]+")
    command, message = base.sub("DATA", command), base.sub("DATA", message)
    with open(dest, "a") as f:
        f.write(json.dumps({"input": input, "command": command, "exit": exit_code, "message": message,
                            "left": left}) + "\n")


def write_ct_dicom(folder: Path, stored: np.ndarray, spacing: float = 5.0, intercept: float = -1024.0,
                   pixel_data: bool = True, **tags: object) -> list[Path]:
    """Write ``stored`` (z, y, x int16) as a DICOM CT series (one file per slice); ``tags`` are set on every
    slice (e.g. Manufacturer). ``pixel_data=False`` leaves the PixelData element out."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(stored.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "P1", study, series
        ds.FrameOfReferenceUID = frame
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = spacing
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, intercept
        for key, v in tags.items():
            setattr(ds, key, v)
        if pixel_data:
            ds.PixelData = np.ascontiguousarray(stored[k].astype(np.int16)).tobytes()
        f = folder / f"img{k:03d}.dcm"
        ds.save_as(f, enforce_file_format=True)
        out.append(f)
    return out
