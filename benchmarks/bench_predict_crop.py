"""Issue 17 item 5: does cropping each batch to the body's box change a trained model's labels, and how much faster
is the Predictor with it?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_predict_crop.py MODEL [--data ../shared/data/nsclc]
        [--every 1] [--threads 2]

For every ``*_ct.nii.gz`` in ``--data`` (every ``--every``-th slice): the model folder's Predictor (bf16,
channels-last, batch 8) with ``crop=True`` (the default: each batch cropped to the body's box, logits padded back
with their edge values) and ``crop=False`` (whole slices). Prints, per volume, the pixel agreement of the two
label maps, each structure's Dice between them, the mean Dice of both against the reference labels (when
``*_labels.nii.gz`` and ``cases.json`` name the case's annotated structures) and slices per second of each
(after one warm-up batch; volume read and reorientation excluded).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/nsclc")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch

    from styleseg.eval.metrics import dice
    from styleseg.io.volume import read_nifti
    from styleseg.seg.inputs import to_canonical
    from styleseg.seg.predict import Predictor

    torch.set_num_threads(a.threads)
    preds = {c: Predictor(a.model, "cpu", 8, "bfloat16", True, crop=c) for c in (True, False)}
    labels = preds[True].labels
    names = [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v > 0]
    print(f"model {a.model}, threads {a.threads}, every {a.every} slice(s)")
    print("| volume | slices | agreement | " + " | ".join(f"{n} crop~whole" for n in names)
          + " | ref Dice crop / whole (mean) | slices/s crop | slices/s whole |")
    print("|---" * (len(names) + 6) + "|")
    meta = a.data / "cases.json"
    ref_labels, cases = {}, {}
    if meta.exists():
        import json

        m = json.loads(meta.read_text())
        ref_labels, cases = m["labels"], {c["id"]: c for c in m["cases"]}
    tot = {True: [0, 0.0], False: [0, 0.0]}
    for path in sorted(a.data.glob("*_ct.nii.gz")):
        img = read_nifti(path)
        flips = preds[True].check_geometry(img.spacing, img.direction, path)
        hu = to_canonical(img.array, flips)[::a.every].astype(np.float32)
        out, rate = {}, {}
        for c, p in preds.items():
            p.predict_array(hu[:8], spacing=img.spacing[:2])
            t0 = time.perf_counter()
            out[c] = p.predict_array(hu, spacing=img.spacing[:2])
            dt = time.perf_counter() - t0
            rate[c] = len(hu) / dt
            tot[c][0] += len(hu)
            tot[c][1] += dt
        agree = float((out[True] == out[False]).mean())
        per = [dice(out[True] == v, out[False] == v) for v in (labels[n] for n in names)]
        ref_txt = "-"
        ref_path = path.with_name(path.name.replace("_ct.nii.gz", "_labels.nii.gz"))
        case = cases.get(path.name.split("_ct")[0])
        if ref_path.exists() and case:
            ref = to_canonical(read_nifti(ref_path).array, flips)[::a.every]
            common = [n for n in names if n in case["annotated"]]
            d = {c: np.mean([dice(out[c] == labels[n], ref == ref_labels[n]) for n in common]) for c in out}
            ref_txt = f"{d[True]:.3f} / {d[False]:.3f}"
        print(f"| {path.name.split('_ct')[0]} | {len(hu)} | {agree:.5f} | "
              + " | ".join(f"{x:.4f}" for x in per) + f" | {ref_txt} | {rate[True]:.2f} | {rate[False]:.2f} |",
              flush=True)
    print(f"\nall volumes: crop {tot[True][0] / tot[True][1]:.2f} slices/s, "
          f"whole {tot[False][0] / tot[False][1]:.2f} slices/s, speed-up {tot[False][1] / tot[True][1]:.2f}x")


if __name__ == "__main__":
    main()
