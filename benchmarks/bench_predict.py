"""Must-show 3: Predictor speed at 512 x 512 (fp32 / bf16 / channels-last) and peak memory vs input size.

Usage: .venv/bin/python benchmarks/bench_predict.py [--threads 2] [--slices 16] [--sizes 100,1000]

Speed: a randomly initialised U-Net (weights do not change the cost) of base width 16 (the quick
preset) and 32, whole 512 x 512 slices, batch 8, after one warm-up batch. Memory: `segment` on a
synthetic NIfTI of N slices of 512 x 512 in a fresh subprocess; peak RSS (ru_maxrss) of that process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_model(folder: Path, base: int, depth: int = 4) -> Path:
    import torch

    from styleseg.labels import LabelSchema
    from styleseg.runs import write_model_folder
    from styleseg.seg.unet import UNet, UNetSpec

    torch.manual_seed(0)
    spec = UNetSpec(1, LabelSchema.default().num_classes, base, depth)
    write_model_folder(folder, "segmentation", {"architecture": spec.to_json(), "windows": ["soft_tissue"],
                                                "downsample": 1, "labels": LabelSchema.default().to_labels_dict(),
                                                "train_spacing_mm": 0.977}, UNet(spec).state_dict())
    return folder


def speed(model: Path, n: int, dtype: str, channels_last: bool) -> float:
    from styleseg.seg.predict import Predictor

    p = Predictor(model, device="cpu", batch_size=8, dtype=dtype, channels_last=channels_last)
    hu = np.random.default_rng(0).normal(0, 200, (n, 512, 512)).astype(np.float32)
    p.predict_array(hu[:8])  # warm-up
    t = time.perf_counter()
    p.predict_array(hu)
    return n / (time.perf_counter() - t)


def write_synthetic(path: Path, n: int, size: int) -> Path:
    from styleseg.io.volume import Volume, write_nifti

    yy, xx = np.mgrid[:size, :size]
    sl = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2, 40, -1000).astype(np.int16)
    return write_nifti(Volume(np.broadcast_to(sl, (n, size, size)).copy(), (0.977, 0.977, 3.0)), path)


def child(model: str, src: str, out: str) -> None:
    import torch

    from styleseg.seg.segment import segment

    torch.set_num_threads(2)
    t = time.perf_counter()
    rep = segment([Path(src)], Path(model), Path(out), batch_size=8, chunk_slices=32)
    # VmHWM (peak RSS of this process image): ru_maxrss would carry the parent's peak across fork+exec
    hwm = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    print(json.dumps({"slices": rep.slices, "seconds": time.perf_counter() - t, "failed": rep.failed,
                      "peak_rss_mb": hwm / 1024,
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--bases", default="16,32", help="U-Net widths for the speed table ('' to skip)")
    ap.add_argument("--mem-size", type=int, default=512, help="in-plane size of the memory test's slices")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    print(f"torch {torch.__version__}, {args.threads} threads, CPU; 512 x 512 slices, batch 8\n")
    print("| U-Net base ch | fp32 | bf16 | fp32 channels-last | bf16 channels-last |  (slices/s)")
    print("|---|---|---|---|---|")
    for base in [int(b) for b in args.bases.split(",") if b]:
        m = make_model(tmp / f"unet{base}", base)
        r = [speed(m, args.slices, d, cl) for cl in (False, True) for d in ("float32", "bfloat16")]
        print(f"| {base} | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} |", flush=True)
    tiny = make_model(tmp / "tiny", 4, depth=2)  # memory does not depend on the network's speed
    print(f"\n{args.mem_size} x {args.mem_size} slices, chunks of 32, tiny U-Net")
    print("| input slices | input MB (int16) | peak RSS MB (VmHWM) | seconds |")
    print("|---|---|---|---|")
    for n in [int(v) for v in args.sizes.split(",") if v]:
        src = write_synthetic(tmp / f"ct{n}.nii.gz", n, args.mem_size)
        r = subprocess.run([sys.executable, __file__, "--child", str(tiny), str(src), str(tmp / f"out{n}")],
                           capture_output=True, text=True, check=True)
        js = json.loads(r.stdout.strip().splitlines()[-1])
        assert not js["failed"] and js["slices"] == n
        mb = n * args.mem_size**2 * 2 / 2**20
        print(f"| {n} | {mb:.0f} | {js['peak_rss_mb']:.0f} | {js['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    else:
        main()
