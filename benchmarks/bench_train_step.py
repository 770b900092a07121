"""Seconds per training step of the segmentation U-Net on this machine, with everything a step does included.

Trains ``styleseg.seg.train.train_segmentation`` on a real dataset for N1 and N2 steps (one epoch, no
validation) and takes the difference, so setup (loading the cases, building the model) cancels out: what is
left is data sampling and augmentation, the forward and backward pass, the loss and the optimiser. The FLOPs of
one step (forward + backward of the U-Net, torch's FlopCounterMode) give the achieved GFLOP/s. Several
alternating repetitions and the median, because a shared machine's load changes while it runs.

    .venv/bin/python benchmarks/bench_train_step.py --dataset /tmp/nsclc_ds --threads 1 --reps 3

``--dataset``: a styleseg dataset (e.g. ``styleseg import ../shared/data/nsclc --out /tmp/nsclc_ds``). The quick
preset's settings by default (base 16, batch 8, 160-px crops), ``--amp bf16`` as the real-CT examples train.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path


def flops_per_step(cfg) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from styleseg.seg.unet import UNet, UNetSpec

    cin = len(cfg.windows) * (2 * cfg.context + 1) + (2 if getattr(cfg, "position", False) else 0)
    net = UNet(UNetSpec(in_channels=cin, num_classes=7, base_channels=cfg.base_channels, depth=cfg.depth))
    x = torch.rand(cfg.batch_size, cin, cfg.crop, cfg.crop)
    with FlopCounterMode(display=False) as fc:
        net(x).float().sum().backward()
    return float(fc.get_total_flops())


def seconds(dataset: Path, cfg, steps: int) -> float:
    from styleseg.seg.train import train_segmentation

    c = dataclasses.replace(cfg, epochs=1, steps_per_epoch=steps, val_fraction=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train_segmentation([dataset], Path(tmp) / "m", c, progress=False, val_cases=[])
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--amp", default="bf16")
    ap.add_argument("--steps", type=int, nargs=2, default=(5, 25), metavar=("N1", "N2"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--position", action="store_true", help="two position channels (the reference arm)")
    a = ap.parse_args()
    import torch

    from styleseg.seg.train import SegTrainConfig

    torch.set_num_threads(a.threads)
    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), amp=a.amp)
    if a.position:
        cfg = dataclasses.replace(cfg, position=True)
    per_step = []
    for _ in range(a.reps):
        t1, t2 = seconds(a.dataset, cfg, a.steps[0]), seconds(a.dataset, cfg, a.steps[1])
        per_step.append((t2 - t1) / (a.steps[1] - a.steps[0]))
    s = statistics.median(per_step)
    gf = flops_per_step(cfg) / 1e9
    print(f"| threads | amp | batch x crop | s/step (median of {a.reps}) | all reps | GFLOP/step | GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {torch.get_num_threads()} | {a.amp} | {cfg.batch_size} x {cfg.crop} | {s:.3f} | "
          f"{', '.join(f'{v:.3f}' for v in per_step)} | {gf:.1f} | {gf / s:.0f} |")


if __name__ == "__main__":
    main()
