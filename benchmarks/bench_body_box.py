"""Issue 17 item 5: how much of a CT slice a body-box crop would leave to the network.

    .venv/bin/python benchmarks/bench_body_box.py [--margin 32] [--data ../shared/data/nsclc]

For every 5th slice of each ``*_ct.nii.gz``: the slice low-passed (Gaussian, 2 px), thresholded at -400 HU and
opened with a 5 x 5 box (which detaches a thin table, as ``styleseg.labels.derive_body`` does); the bounding box of
every component of at least 1% of the largest one (so separated arms stay inside), grown by ``--margin`` px on each
side and rounded up to a multiple of 16 (the U-Net's 2**depth). Prints the box's mean and largest share of the slice:
the share of the network's work a crop to it would keep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi


def box_share(s: np.ndarray, margin: int, multiple: int = 16) -> tuple[float, int]:
    m = ndi.binary_opening(ndi.gaussian_filter(s, 2) > -400, np.ones((5, 5), bool))
    lab, n = ndi.label(m)
    if n == 0:
        return 1.0, 0
    sizes = np.bincount(lab.ravel())[1:]
    big = 1 + np.nonzero(sizes >= 0.01 * sizes.max())[0]
    ys, xs = np.nonzero(np.isin(lab, big))
    h = min(s.shape[0], -(-(ys.max() - ys.min() + 1 + 2 * margin) // multiple) * multiple)
    w = min(s.shape[1], -(-(xs.max() - xs.min() + 1 + 2 * margin) // multiple) * multiple)
    return h * w / s.size, len(big)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/nsclc")
    ap.add_argument("--margin", type=int, default=32)
    a = ap.parse_args()
    print("| volume | mean share | largest share | components kept (max) |\n|---|---:|---:|---:|")
    for f in sorted(a.data.glob("*_ct.nii.gz")):
        vol = np.asarray(nib.load(f).dataobj, np.float32)  # x, y, z
        res = [box_share(vol[:, :, z], a.margin) for z in range(0, vol.shape[2], 5)]
        share = [r[0] for r in res]
        print(f"| {f.name} | {np.mean(share):.3f} | {np.max(share):.3f} | {max(r[1] for r in res)} |", flush=True)


if __name__ == "__main__":
    main()
