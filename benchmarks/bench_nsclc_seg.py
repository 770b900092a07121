"""Must-show 1: train the U-Net on 4 NSCLC-Radiomics patients, test on the other 3, native spacing.

Usage: .venv/bin/python benchmarks/bench_nsclc_seg.py [--work /tmp/styleseg_nsclc] [--epochs N] [--smoke]

Imports ../shared/data/nsclc with ``DatasetWriter`` (body derived with ``add_body``; per-case
annotated structures from cases.json, so partial labels stay partial), trains with the "quick"
preset (CPU, crops at native ~0.98 mm spacing), predicts whole 512 x 512 test slices with the
Predictor, and prints a table of per-case 3D Dice (numpy; structures a case did not annotate are
skipped) with the targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "nsclc"
TRAIN = ("LUNG1-002", "LUNG1-004", "LUNG1-005", "LUNG1-009")
TEST = ("LUNG1-001", "LUNG1-006", "LUNG1-008")
TARGETS = {"lung_left": 0.95, "lung_right": 0.95, "heart": 0.85, "spinal_cord": 0.75, "esophagus": 0.55}


def import_nsclc(out: Path, cases: tuple[str, ...]) -> Path:
    """Import ``cases`` into a dataset at ``out`` (kept and reused; a different case list there is an error)."""
    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import read_nifti
    from styleseg.labels import LabelSchema, add_body

    if (out / "dataset.json").exists():
        have = sorted(json.loads((out / "dataset.json").read_text())["styleseg"]["cases"])
        if have and have != sorted(cases):
            raise SystemExit(f"{out} holds {have}, not {sorted(cases)}: use another --work for this split")
        return out
    schema = LabelSchema.default()
    meta = {c["id"]: c for c in json.loads((DATA / "cases.json").read_text())["cases"]}
    with DatasetWriter(out, "nsclc", schema, meta={"source": str(DATA)}) as w:
        for cid in cases:
            img = read_nifti(DATA / f"{cid}_ct.nii.gz")
            lab = read_nifti(DATA / f"{cid}_labels.nii.gz")
            lab = lab.with_array(add_body(lab.array, img.array, schema))
            w.add_case(cid, img, lab, annotated=[*meta[cid]["annotated"], "body"], derived=["body"])
    return out


def dice_table(pred_dir: Path, cases: tuple[str, ...]) -> dict[str, dict[str, float]]:
    from styleseg.io.volume import read_nifti
    from styleseg.labels import LabelSchema

    schema = LabelSchema.default()
    meta = {c["id"]: c for c in json.loads((DATA / "cases.json").read_text())["cases"]}
    res: dict[str, dict[str, float]] = {}
    for cid in cases:
        ref = read_nifti(DATA / f"{cid}_labels.nii.gz").array
        pred = read_nifti(pred_dir / f"{cid}.nii.gz").array
        res[cid] = {}
        for name in meta[cid]["annotated"]:
            v = schema.value(name)
            p, r = pred == v, ref == v
            res[cid][name] = float(2 * (p & r).sum() / max(p.sum() + r.sum(), 1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/styleseg_nsclc"))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; on a shared 2-core machine 1 thread was 5x faster per step than 2")
    ap.add_argument("--smoke", action="store_true", help="a 2-step run to check the script")
    ap.add_argument("--amp", choices=("none", "bf16"), default=None, help="override the preset's amp")
    ap.add_argument("--crop", type=int, default=None, help="override the preset's crop size (px, native spacing)")
    ap.add_argument("--test", default=",".join(TEST),
                    help="comma-separated test patients (the other NSCLC patients train); use a fresh --work per split")
    ap.add_argument("--context", type=int, default=None, help="2.5D: neighbouring slices per side as channels")
    ap.add_argument("--position", action="store_true", help="two position channels (x, y in the body box)")
    ap.add_argument("--tag", default="quick", help="model folder name suffix (model_<tag>)")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the model folder as it is now")
    args = ap.parse_args()
    import torch

    from styleseg.runs import setup_logging
    from styleseg.seg.segment import segment
    from styleseg.seg.train import SegTrainConfig, train_segmentation

    setup_logging()
    torch.set_num_threads(args.threads)
    cfg = SegTrainConfig.preset("quick")
    if args.smoke:
        cfg = dataclasses.replace(cfg, epochs=1, steps_per_epoch=2)
    if args.epochs:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    if args.steps:
        cfg = dataclasses.replace(cfg, steps_per_epoch=args.steps)
    if args.amp:
        cfg = dataclasses.replace(cfg, amp=args.amp)
    if args.crop:
        cfg = dataclasses.replace(cfg, crop=args.crop)
    if args.context is not None:
        cfg = dataclasses.replace(cfg, context=args.context)
    cfg = dataclasses.replace(cfg, position=args.position)
    test = tuple(sorted(args.test.split(",")))
    unknown = set(test) - set(TRAIN + TEST)
    if unknown:
        raise SystemExit(f"--test: unknown patients {sorted(unknown)}; choose from {sorted(TRAIN + TEST)}")
    train = tuple(sorted(set(TRAIN + TEST) - set(test)))
    print(f"train {train}, test {test}")
    train_ds = import_nsclc(args.work / "train_ds", train)
    test_ds = import_nsclc(args.work / "test_ds", test)
    model = args.work / f"model_{'smoke' if args.smoke else args.tag}"
    t0 = time.perf_counter()
    resume = (model / "checkpoint.pt").exists()
    if not args.eval_only and (not (model / "model.json").exists() or resume):
        train_segmentation([train_ds], model, cfg, resume=resume, val_cases=[], progress=False)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = args.work / f"pred_{model.name}{'_eval' if args.eval_only else ''}"
    rep = segment([test_ds], model, pred)
    t_pred = time.perf_counter() - t0
    res = dice_table(pred, test)
    epochs_done = json.loads((model / "model.json").read_text()).get("best_epoch")
    print(f"model after epoch {epochs_done} of {cfg.epochs}")
    names = list(TARGETS)
    print(f"\ncrop {cfg.crop} px at native spacing (~0.98 mm), base {cfg.base_channels} ch, depth {cfg.depth}, "
          f"{cfg.epochs} x {cfg.steps_per_epoch} steps of batch {cfg.batch_size}, amp {cfg.amp}, "
          f"context {cfg.context}, position {cfg.position}; "
          f"train {t_train / 60:.1f} min, "
          f"predict {t_pred:.0f} s for {rep.slices} slices")
    print("| case | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for cid, d in res.items():
        print(f"| {cid} | " + " | ".join(f"{d[n]:.3f}" if n in d else "n/a" for n in names) + " |")
    means = {n: float(np.mean([d[n] for d in res.values() if n in d])) for n in names}
    print("| mean | " + " | ".join(f"{means[n]:.3f}" for n in names) + " |")
    print("| target | " + " | ".join(f">= {TARGETS[n]:.2f}" for n in names) + " |")
    ok = all(means[n] >= TARGETS[n] for n in names)
    print("all targets met" if ok else "targets NOT all met")


if __name__ == "__main__":
    main()
