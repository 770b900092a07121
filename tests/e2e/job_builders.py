"""Toy data for the job path: an annotated NIfTI source and an unlabelled target of synthetic DICOM series (and one
NIfTI image), all made from the procedural phantom so the answers are known.

The target's DICOM tree::

    target/P1/        one axial series (3 slices) and a localizer image in the same folder
    target/P2/s2, s3  two series of one patient (another texture each)
    target/P3/        one series at 0.7 mm pixels (the resampling path)
    target_nifti/T4_ct.nii.gz   a NIfTI target image

Each target case's true label map is kept (``truth``), so a test can "correct" a style slice with it, or use
it as a reference label.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from io_builders import write_ct_series  # noqa: E402

from styleseg.io.volume import Volume, write_nifti  # noqa: E402
from styleseg.sim.phantom import PhantomConfig, make_phantom  # noqa: E402

SIZE = 128


def textured(img: Volume, seed: int, sd: float, sharp: bool) -> np.ndarray:
    """The phantom with noise: white-ish high-pass noise (``sharp``) or low-passed noise, ``sd`` HU."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, img.shape)
    noise = noise - ndi.gaussian_filter(noise, (0, 1.5, 1.5)) if sharp else ndi.gaussian_filter(noise, (0, 1.0, 1.0))
    noise *= sd / noise.std()
    return np.clip(np.rint(img.array + noise), -1024, 3000).astype(np.int16)


def phantom(seed: int, spacing: float = 0.9, n: int = 3) -> tuple[Volume, Volume]:
    return make_phantom(seed, PhantomConfig(size=SIZE, n_slices=n, spacing_mm=spacing))


def write_series(folder: Path, img: Volume, stored: np.ndarray, patient: str, number: int, **tags) -> dict:
    """``stored`` (z, y, x HU, the phantom's slice order: apex first) as a DICOM CT series; DICOM sorts slices
    along +z, so the phantom's slice k (z = -k dz) becomes DICOM slice n - 1 - k."""
    dz = img.spacing[2]
    zs = [-k * dz for k in range(stored.shape[0])]
    return write_ct_series(folder, stored + 1024, spacing=(img.spacing[1], img.spacing[0]), dz=dz,
                           origin=img.origin, patient=patient, z_positions=zs, SeriesNumber=number,
                           Manufacturer="TOY", ConvolutionKernel="SHARP" if number % 2 else "SMOOTH", **tags)


def write_localizer(folder: Path, patient: str) -> None:
    """A scout (ImageType LOCALIZER, coronal) as ``folder/localizer.dcm``, beside the series' slices."""
    tmp = folder / "_scout"
    write_ct_series(tmp, np.zeros((1, 64, SIZE), np.int16), patient=patient, SeriesNumber=99,
                    ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    (tmp / "img001.dcm").rename(folder / "localizer.dcm")
    tmp.rmdir()


#: the case ids the importer gives the target series (discover_series: PatientID, or with several series
#: PatientID_StudyDate_sSeriesNumber) and the NIfTI image
CASES = ("P1", "P2_20200101_s2", "P2_20200101_s3", "P3", "T4")
DICOM_CASES = CASES[:4]


def build(root: Path) -> dict[str, object]:
    """Write source and target data under ``root``; returns the paths, the DICOM identifiers of each target
    series (``ids[case]``) and the true label map of each target case in its imported slice order (``truth``)."""
    src = root / "source"
    src.mkdir(parents=True)
    for i in range(3):
        img, lab = phantom(100 + i)
        write_nifti(img.with_array(textured(img, i, 12.0, sharp=False)), src / f"S{i}_ct.nii.gz")
        write_nifti(lab, src / f"S{i}_labels.nii.gz")
    tgt = root / "target"
    truth: dict[str, np.ndarray] = {}
    ids = {}
    for case, patient, folder, seed, number, spacing, sharp in (
            ("P1", "P1", "P1", 200, 2, 0.9, True), ("P2_20200101_s2", "P2", "P2/s2", 201, 2, 0.9, True),
            ("P2_20200101_s3", "P2", "P2/s3", 202, 3, 0.9, False), ("P3", "P3", "P3", 203, 2, 0.7, True)):
        img, lab = phantom(seed, spacing)
        stored = textured(img, seed, 60.0 if sharp else 25.0, sharp)
        ids[case] = write_series(tgt / folder, img, stored, patient, number)
        truth[case] = np.asarray(lab.array)[::-1].copy()  # DICOM order: ascending z
    write_localizer(tgt / "P1", "P1")
    nif = root / "target_nifti"
    img, lab = phantom(204)
    write_nifti(img.with_array(textured(img, 204, 60.0, sharp=True)), nif / "T4_ct.nii.gz")
    truth["T4"] = np.asarray(lab.array)
    return {"source": src, "target": tgt, "target_nifti": nif / "T4_ct.nii.gz", "truth": truth, "ids": ids}
