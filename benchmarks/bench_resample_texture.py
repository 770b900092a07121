"""How resampling to the source's pixel spacing changes a real slice's texture (the spacing rule of the job).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_resample_texture.py [--train-mm 0.977]

For real target slices of other spacings (the Lung-PET-CT-Dx kernel pair at 0.842 mm, COVID-19-NY-SBU slices at
0.62-0.95 mm) it measures the soft-tissue NPS (``styleseg.texture.slice_nps``, ICRU 87, in cycles/mm) at the
native spacing and after ``styleseg.seg.resample.resample_slice`` to ``--train-mm`` (the NSCLC source's 0.977 mm),
and prints per slice: noise std, mean frequency, and the NPS distance (RMS of log10 NPS, decades) between the two,
next to the distance between the two kernels of the pair (a real texture shift) for scale. A last row resamples
by only 3 % to show what interpolation alone does to noise at a small ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from styleseg.io.volume import read_nifti
from styleseg.labels import derive_body
from styleseg.seg.resample import resample_slice
from styleseg.texture import nps_distance, slice_nps

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _slices() -> list[tuple[str, np.ndarray, float]]:
    out = []
    for kernel in ("L", "B"):
        v = read_nifti(DATA / "kernel-pairs" / f"A0001_kernel-{kernel}_ct.nii.gz")
        for z in (28, 32, 36):
            out.append((f"A0001 kernel {kernel} z={z}", np.asarray(v.array[z], np.float32), v.spacing[0]))
    import pydicom

    for f in sorted((DATA / "dicom" / "covid19-ny-sbu-axial").rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        if "ORIGINAL" not in list(ds.ImageType):
            continue
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out.append((f"{f.parent.name}/{f.name} {ds.Manufacturer.split()[0]}", hu, float(ds.PixelSpacing[0])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-mm", type=float, default=0.977)
    args = ap.parse_args()
    print("| slice | native mm | std native / resampled (HU) | mean f native / resampled (cyc/mm) "
          "| d(native, resampled) |")
    print("|---|---|---|---|---|")
    rows = _slices()
    nps = {}
    for name, hu, sp in rows:
        try:
            a = slice_nps(hu, sp, derive_body(hu))
            rs, new = resample_slice(hu, (sp, sp), args.train_mm, tolerance=0.0)
            b = slice_nps(rs, new[0], derive_body(rs))
        except ValueError as e:
            print(f"| {name} | {sp:.3f} | (no soft-tissue ROI: {e}) | | |")
            continue
        nps[name] = a
        print(f"| {name} | {sp:.3f} | {a.std:.1f} / {b.std:.1f} | {a.mean_freq:.3f} / {b.mean_freq:.3f} | "
              f"{nps_distance(a, b):.3f} |")
    for z in (28, 32, 36):
        la, lb = nps.get(f"A0001 kernel L z={z}"), nps.get(f"A0001 kernel B z={z}")
        if la is not None and lb is not None:
            print(f"| kernel L vs B at z={z} (same photons, native) | | | | {nps_distance(la, lb):.3f} |")
    name, hu, sp = rows[3]
    a = slice_nps(hu, sp, derive_body(hu))
    rs, new = resample_slice(hu, (sp, sp), sp * 1.03, tolerance=0.0)
    b = slice_nps(rs, new[0], derive_body(rs))
    print(f"| {name}, resampled by 3 % only | {sp:.3f} | {a.std:.1f} / {b.std:.1f} | {a.mean_freq:.3f} / "
          f"{b.mean_freq:.3f} | {nps_distance(a, b):.3f} |")


if __name__ == "__main__":
    main()
