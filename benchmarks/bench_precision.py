"""Is bfloat16 autocast fast on this machine? A U-Net training step and a predictor forward, fp32 against bf16.

On CPUs whose oneDNN has a bf16 path (AVX-512, AMX) bf16 autocast is the faster precision; on AVX2-only CPUs
(e.g. AMD Zen 3) it is emulated and many times slower than float32. ``amp = "auto"`` (``styleseg.trainer.
resolve_amp``) picks bf16 only where :func:`styleseg.trainer.fast_bf16` says the hardware has it; this script
measures what that choice is worth here. The step is the network's part of a training step (forward, Dice-free
cross-entropy, backward, fused AdamW) on a synthetic batch, so data loading does not blur the comparison; the
forward is the predictor's (batch-norm folded, no grad) on whole slices.

    .venv/bin/python benchmarks/bench_precision.py --threads 1 --crop 128 --reps 7
"""

from __future__ import annotations

import argparse
import statistics
import time


def median_seconds(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def make_step(what: str, bf16: bool, cl: bool, a: argparse.Namespace):
    """A call running one training step (``what == "train step"``) or one predictor forward."""
    import torch

    from styleseg.seg.unet import UNet, UNetSpec, fold_batch_norm

    torch.manual_seed(0)
    if what == "train step":
        net = UNet(UNetSpec(in_channels=3, num_classes=7, base_channels=a.base, depth=4))
        x = torch.rand(a.batch, 3, a.crop, a.crop)
        y = torch.randint(0, 7, (a.batch, a.crop, a.crop))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    else:
        net = fold_batch_norm(UNet(UNetSpec(in_channels=1, num_classes=7, base_channels=a.pred_base, depth=4))).eval()
        x = torch.rand(a.pred_slices, 1, a.slice, a.slice)
    if cl:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if what == "predict":
                with torch.no_grad():
                    net(x)
                return
            out = net(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crop", type=int, default=128, help="training crop (the demo: 128, the quick preset: 160)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--base", type=int, default=16, help="U-Net base channels of the training step")
    ap.add_argument("--slice", type=int, default=512, help="predictor slice size")
    ap.add_argument("--pred-base", type=int, default=32)
    ap.add_argument("--pred-slices", type=int, default=2, help="slices per predictor forward")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    import torch

    from styleseg.trainer import fast_bf16

    torch.set_num_threads(a.threads)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, fast_bf16(cpu) = {fast_bf16('cpu')}, "
          f"{a.threads} thread(s)")
    print("| what | precision | layout | s | vs fp32 contiguous |")
    print("|---|---|---|---:|---:|")
    for what in ("train step", "predict"):
        ref = None
        for bf16, cl in ((False, False), (False, True), (True, True)):
            step = make_step(what, bf16, cl, a)
            emulated = bf16 and not fast_bf16("cpu")  # one warm-up and one timed call: it is that slow
            s = median_seconds(step, 1 if emulated else a.reps, 1 if emulated else 2)
            ref = ref or s
            unit = f"{what} ({a.batch} x {a.crop}^2, base {a.base})" if what == "train step" else \
                f"predict ({a.pred_slices} x {a.slice}^2, base {a.pred_base})"
            print(f"| {unit} | {'bf16' if bf16 else 'fp32'} | {'channels-last' if cl else 'contiguous'} | "
                  f"{s:.3f} | {ref / s:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
