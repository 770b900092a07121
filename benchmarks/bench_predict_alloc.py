"""Issue 17 item 5: what the network batch and glibc's allocator cost the predictor's forward on this CPU.

    .venv/bin/python benchmarks/bench_predict_alloc.py [--threads 2] [--base 32] [--batches 8 4 2 1]
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=268435456 \
        .venv/bin/python benchmarks/bench_predict_alloc.py

The folded base-``--base`` U-Net (depth 4, random weights: they do not change the cost) under bf16 autocast and
channels-last, as the Predictor runs it, on random 512 x 512 slices: slices/s over 16 slices per batch size, with
the process's user and system CPU seconds and minor page faults over the timed calls (``getrusage``). Large
activations (a batch of 8 at base 32 is ~130 MB per tensor) are above glibc's mmap threshold, so every op maps and
zero-fills fresh pages and unmaps them again; the page faults and the system time show that cost. The glibc
environment variables in the second command keep freed memory in the heap instead (read at start-up).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from styleseg.seg.unet import UNet, UNetSpec, fold_batch_norm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 4, 2, 1])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    net = fold_batch_norm(UNet(UNetSpec(1, 7, a.base, 4)).eval()).to(memory_format=torch.channels_last)
    print("| batch | slices/s | user s | system s | minor page faults |\n|---:|---:|---:|---:|---:|")
    for bs in a.batches:
        x = torch.randn(bs, 1, 512, 512).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)
            r0, t, n = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
            while n < a.slices:
                net(x)
                n += bs
            dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
        print(f"| {bs} | {n / dt:.2f} | {r1.ru_utime - r0.ru_utime:.1f} | {r1.ru_stime - r0.ru_stime:.1f} | "
              f"{r1.ru_minflt - r0.ru_minflt} |", flush=True)


if __name__ == "__main__":
    main()
