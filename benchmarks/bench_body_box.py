"""Issue 17 item 5: how much of a CT slice a body-box crop would leave to the network.

    .venv/bin/python benchmarks/bench_body_box.py [--margin 32] [--data ../shared/data/nsclc]

For every 5th slice of each ``*_ct.nii.gz``: the predictor's box around the body (``styleseg.seg.inputs.body_box``:
the slice low-passed, thresholded at -400 HU and opened with a 5 x 5 box, which detaches a thin table; the bounding
box of every component of at least 1% of the largest one, so separated arms stay inside), grown by ``--margin`` px on
each side and rounded up to a multiple of 16 (the U-Net's 2**depth). Prints the box's mean and largest share of the
slice: the share of the network's work a crop to it would keep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from styleseg.seg.inputs import body_box


def box_share(s: np.ndarray, margin: int, multiple: int = 16) -> float:
    box = body_box(s, margin, multiple)
    if box is None:
        return 1.0
    y0, y1, x0, x1 = box
    return (y1 - y0) * (x1 - x0) / s.size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/nsclc")
    ap.add_argument("--margin", type=int, default=32)
    a = ap.parse_args()
    print("| volume | mean share | largest share |\n|---|---:|---:|")
    for f in sorted(a.data.glob("*_ct.nii.gz")):
        vol = np.asarray(nib.load(f).dataobj, np.float32)  # x, y, z
        share = [box_share(vol[:, :, z], a.margin) for z in range(0, vol.shape[2], 5)]
        print(f"| {f.name} | {np.mean(share):.3f} | {np.max(share):.3f} |", flush=True)


if __name__ == "__main__":
    main()
