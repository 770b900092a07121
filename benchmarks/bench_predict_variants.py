"""The Predictor's network at inference, variant by variant (issue 17 item 5): what folding batch norm, bf16
weights and torch.compile each give on this CPU.

    .venv/bin/python benchmarks/bench_predict_variants.py [--threads 2] [--base 32]

A randomly initialised U-Net (depth 4; weights do not change the cost) on a batch of 8 random 512 x 512 slices,
under bf16 autocast and channels-last (the Predictor's default in ``segment``): the network as trained, with batch
norm folded into the convolutions (:func:`styleseg.seg.unet.fold_batch_norm`, what the Predictor runs), the folded
network with bf16 weights, and the folded network through ``torch.compile`` (inductor; the first call compiles).
Slices/s of two calls of 8 slices, twice, after a warm-up call.
"""

from __future__ import annotations

import argparse
import time

import torch

from styleseg.seg.unet import UNet, UNetSpec, fold_batch_norm


def bench(name: str, net, x: torch.Tensor, autocast: bool = True) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        t = time.perf_counter()
        net(x)
        first = time.perf_counter() - t
        rates = []
        for _ in range(2):
            t = time.perf_counter()
            net(x)
            net(x)
            rates.append(2 * x.shape[0] / (time.perf_counter() - t))
    print(f"| {name} | {first:.1f} | {rates[0]:.2f}, {rates[1]:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet(UNetSpec(1, 6, args.base, 4)).eval()
    x = torch.randn(8, 1, 512, 512).contiguous(memory_format=torch.channels_last)
    folded = fold_batch_norm(net).to(memory_format=torch.channels_last)
    print(f"torch {torch.__version__}, {args.threads} threads; U-Net base {args.base}, batch 8 x 512 x 512, bf16 "
          "autocast, channels-last\n\n| variant | first call s | slices/s |\n|---|---:|---|")
    bench("as trained (batch norm)", net.to(memory_format=torch.channels_last), x)
    bench("batch norm folded (the Predictor)", folded, x)
    bench("folded, bf16 weights (no autocast)", fold_batch_norm(net).to(torch.bfloat16).to(
        memory_format=torch.channels_last), x.to(torch.bfloat16), autocast=False)
    bench("folded, torch.compile", torch.compile(folded, dynamic=False), x)


if __name__ == "__main__":
    main()
