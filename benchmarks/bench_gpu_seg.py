"""Segmentation speed on a GPU (or CPU): Predictor slices/s at 512 x 512 and U-Net training throughput.

Usage: PYTHONPATH=src python benchmarks/bench_gpu_seg.py [--device cuda] [--out results.json]

- Predictor: ``styleseg.seg.predict.Predictor.predict_array`` on N whole 512 x 512 slices (HU), base width
  16 / 32 / 64, float32 vs bfloat16 (+ channels-last), batch 16, after a warm-up pass; a randomly
  initialised U-Net (weights do not change the cost).
- Training: one optimiser step of the paper preset (U-Net base 64, depth 4, batch 16, 512 x 512 crops,
  marginal Dice + CE, AdamW) in fp32 and in bf16 autocast; slices/s and the estimate for the paper's
  30 epochs over 4900 augmented slices.
Needs only torch and numpy (no SimpleITK), so it runs on a bare GPU machine with PYTHONPATH=src.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def predictor_speed(device: str, base: int, dtype: str, channels_last: bool, n: int, batch: int) -> float:
    import torch

    from styleseg.labels import LabelSchema
    from styleseg.runs import write_model_folder
    from styleseg.seg.predict import Predictor
    from styleseg.seg.unet import UNet, UNetSpec

    torch.manual_seed(0)
    spec = UNetSpec(1, LabelSchema.default().num_classes, base, 4)
    with tempfile.TemporaryDirectory() as tmp:
        write_model_folder(tmp, "segmentation", {"architecture": spec.to_json(), "windows": ["soft_tissue"],
                                                 "downsample": 1, "labels": LabelSchema.default().to_labels_dict(),
                                                 "train_spacing_mm": 0.977}, UNet(spec).state_dict())
        pred = Predictor(tmp, device=device, batch_size=batch, dtype=dtype, channels_last=channels_last)
        hu = np.random.default_rng(0).normal(0, 300, (n, 512, 512)).astype(np.float32)
        pred.predict_array(hu[:batch])
        _sync(pred.device)
        t = time.perf_counter()
        pred.predict_array(hu)
        _sync(pred.device)
        return n / (time.perf_counter() - t)


def train_speed(device: str, base: int, batch: int, crop: int, amp: bool, steps: int) -> float:
    import torch

    from styleseg.seg.losses import marginal_dice_ce
    from styleseg.seg.unet import UNet, UNetSpec

    dev = torch.device(device)
    model = UNet(UNetSpec(1, 7, base, 4)).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.rand(batch, 1, crop, crop, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch, crop, crop), device=dev)
    ann = torch.ones(batch, 7, dtype=torch.bool, device=dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = marginal_dice_ce(logits.float(), y, ann)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=0, help="slices for the predictor (default 256 GPU / 16 CPU)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    gpu = a.device.startswith("cuda")
    n = a.n or (256 if gpu else 16)
    name = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    rows = []
    print(f"device: {name}; torch {torch.__version__}")
    print(f"{'what':<44} {'slices/s':>9}")
    for base in (16, 32, 64):
        for dtype, cl in (("float32", False), ("bfloat16", False), ("bfloat16", True)):
            v = predictor_speed(a.device, base, dtype, cl, n, 16 if gpu else 8)
            what = f"predict 512x512, base {base}, {dtype}{' + channels-last' if cl else ''}"
            rows.append({"what": what, "slices_per_s": v})
            print(f"{what:<44} {v:9.1f}")
    if gpu:
        for amp in (False, True):
            v = train_speed(a.device, 64, 16, 512, amp, 20)
            what = f"train step 512x512, base 64, batch 16, {'bf16' if amp else 'fp32'}"
            est = 30 * 4900 / v / 60
            rows.append({"what": what, "slices_per_s": v, "paper_30_epochs_4900_slices_min": est})
            print(f"{what:<44} {v:9.1f}   (paper preset: 30 epochs x 4900 slices = {est:.1f} min)")
    if a.out:
        a.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
