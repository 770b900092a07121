"""Training of the style generators (paper sec. 2.2): loss = alpha * content (eq. 2) + beta * style (eq. 1).

For each style slice S (or once, for the conditional generator, with a random style per batch element)
the generator learns to turn every source label map into a slice with S's texture: the content target is
the source slice O whose label map is the input, the style targets are S's per-segment Gram matrices,
computed ONCE on the whole style slice at native spacing (:mod:`styleseg.style.targets`). Training uses
random crops at native spacing (the generator is fully convolutional and Gram matrices are area-normalised
averages, so crops carry the style); nothing is resampled. The objective is one object,
:class:`styleseg.style.losses.GeneratorLoss`; the bookkeeping (checkpoints, log, progress) is the shared
:class:`styleseg.trainer.TrainingRun`.

Beyond the paper, ``gamma`` weights a per-segment mean-HU term against the style slice's segment means
(the VGG losses see the soft-tissue window only; lungs and bone lie outside it). With the residual generator
(the default, see :mod:`styleseg.style.generator`) the segment means are exact by construction and the term
only reports them. The content target O is intensity-matched (``content_match_means``): each segment of O
is shifted to the style slice's mean of that segment, so eq. (2) asks for the source's anatomy, not for its
(other) contrast and brightness. The generator's noise colouring filter and amplitudes start from the style
slice's measured NPS (``noise_init="nps"``) and are refined by eq. (1).

Output folder::

    OUT/style_00/   model.json + weights.pt (runs.write_model_folder, kind "generator"), checkpoint.pt
                    (full state, resumable exactly), train_log.jsonl, loss_curve.png
    OUT/style_01/ ...            (separate generators)   or   OUT/conditional/ (one for all styles)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from styleseg.config import config_hash, to_dict
from styleseg.errors import InputError
from styleseg.io.atomic import check_output_folder
from styleseg.style.data import Source, load_source, load_styles, sample_batch
from styleseg.style.generator import GeneratorSpec, StyleGenerator, add_bone_segment, save_generator
from styleseg.style.losses import NpsTargets, StyleTargets, segment_masks
from styleseg.style.targets import absent_structures, compute_targets, fill_absent, nps_targets, texture_init
from styleseg.style.train_config import GeneratorArch, GeneratorConfig, GeneratorLossConfig, GeneratorOptim
from styleseg.style.vgg import VGG19Features, ct_to_vgg_input
from styleseg.trainer import resolve_amp

__all__ = ["GeneratorArch", "GeneratorConfig", "GeneratorLossConfig", "GeneratorOptim", "fit_generators",
           "texture_init", "train_generators"]

log = logging.getLogger("styleseg.style.train")


# --- one generator -----------------------------------------------------------------------------------

@dataclass
class _Job:
    """One generator to train: its folder, style targets and the shared inputs."""

    folder: Path
    src: Source
    targets: StyleTargets
    means: torch.Tensor
    records: list[dict]
    steps: int
    texture: tuple[torch.Tensor, torch.Tensor]
    nps: NpsTargets | None


def _build(job: _Job, cfg: GeneratorConfig, num_classes: int, schema) -> StyleGenerator:
    from styleseg.runs import seed_everything

    a = cfg.arch
    n_styles = len(job.records) if a.conditional else 1
    body = schema.value("body") if a.bone_hu > 0 and "body" in schema.names else -1
    spec = GeneratorSpec(num_classes=num_classes, base=a.base, n_res=a.n_res, n_styles=n_styles,
                         conditional=a.conditional, image_input=a.image_input, output=a.output,
                         noise_kernel=a.noise_kernel, bone_hu=a.bone_hu if body >= 0 else 0.0,
                         body_value=body, source_skip=a.source_skip, source_sigma=a.source_sigma,
                         source_lowpass=a.source_lowpass, source_means=a.keeps_source_means,
                         bone_low_hu=a.bone_low_hu if body >= 0 else 0.0, bone_source=a.bone_source and body >= 0)
    seed_everything(cfg.optim.seed)
    model = StyleGenerator(spec)
    model.init_prior(job.means.cpu(), job.targets.present.cpu())
    if a.output == "residual":
        model.init_texture(*job.texture)
        if not a.train_texture:  # keep the measured NPS texture (see docs/style.md)
            model.noise_filter.requires_grad_(False)
            model.noise_amp.requires_grad_(False)
    return model


def _fit_one(job: _Job, vgg: VGG19Features, cfg: GeneratorConfig, num_classes: int, schema, device: torch.device,
             resume: bool, progress: bool, extra_json: dict[str, Any]) -> Path:
    from styleseg.trainer import TrainingRun

    folder = job.folder
    folder.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg, extra_json)
    if resume and (folder / "model.json").exists():
        if json.loads((folder / "model.json").read_text()).get("config_hash") == chash:
            log.info("%s: already trained with this config, skipped", folder)
            return folder
    model = _build(job, cfg, num_classes, schema).to(device)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=job.steps, eta_min=cfg.optim.lr * 0.1)
    run = TrainingRun(folder, chash, progress=progress)
    start = 0
    state = run.load(resume)  # a checkpoint of another config raises CheckpointMismatch
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["step"])
        log.info("%s: resuming at step %d/%d", folder, start, job.steps)
    else:
        run.fresh_log()
    step_fn = _Stepper(model, opt, sched, vgg, cfg, job, num_classes, device)
    t0 = time.perf_counter()
    model.train()
    with run.progress(folder.name, job.steps, start) as bar:
        for step in range(start, job.steps):
            parts = step_fn(step)
            done = step + 1
            if done % cfg.optim.log_every == 0 or done == job.steps:
                run.log({"step": done, **parts, "lr": sched.get_last_lr()[0],
                         "seconds": round(time.perf_counter() - t0, 2)})
            if done % cfg.optim.checkpoint_every == 0 or done == job.steps:
                run.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "step": done, "config": to_dict(cfg)})
            bar.advance()
    save_generator(folder, model.cpu(), schema, job.records, to_dict(cfg),
                   extra={"config_hash": chash, "steps": job.steps,
                          "train_seconds_last_run": round(time.perf_counter() - t0, 1), **extra_json})
    model.to(device)
    try:
        from styleseg.style.figures import plot_losses

        plot_losses(run.log_path, folder / "loss_curve.png")
    except Exception as e:  # noqa: BLE001 - a figure must not fail a finished training
        log.warning("loss curve not drawn: %s", e)
    return folder


class _Stepper:
    """One optimisation step of a generator: a deterministic batch for (seed, step), the loss, the update."""

    def __init__(self, model: StyleGenerator, opt: Any, sched: Any, vgg: VGG19Features, cfg: GeneratorConfig,
                 job: _Job, num_classes: int, device: torch.device):
        self.model, self.opt, self.sched, self.vgg, self.cfg, self.job = model, opt, sched, vgg, cfg, job
        self.num_classes, self.device = num_classes, device
        self.n_styles = len(job.records) if cfg.arch.conditional else 1
        self.targets = job.targets.to(device)
        self.means = job.means.to(device)
        self.loss = cfg.loss.loss()
        self.bf16 = resolve_amp("bf16" if cfg.optim.bf16 else "none", device, "generators.bf16") == "bf16"

    def __call__(self, step: int) -> dict[str, float]:
        cfg, dev, o = self.cfg, self.device, self.cfg.optim
        imgs, labs = sample_batch(self.job.src, o.crop, o.batch, o.seed, step)
        src = torch.from_numpy(imgs.astype(np.float32))[:, None].to(dev)
        lab = torch.from_numpy(labs.astype(np.int64)).to(dev)
        g = torch.Generator().manual_seed(o.seed * 1_000_003 + step)
        noise = torch.randn(lab.shape[0], 1, *lab.shape[1:], generator=g).to(dev)
        style = (torch.randint(0, self.n_styles, (lab.shape[0],), generator=g) if self.n_styles > 1
                 else torch.zeros(lab.shape[0], dtype=torch.long)).to(dev)
        masks = segment_masks(lab, self.num_classes)
        tsel = self.targets.select(style) if self.n_styles > 1 else self.targets
        msel = self.means[style] if self.n_styles > 1 else self.means
        content = src
        if cfg.loss.content_match_means and not self.model.spec.source_means:  # at the style's segment means
            area = masks.flatten(2).sum(2).clamp_min(1.0)
            shift = torch.where(tsel.present, msel - (src * masks).flatten(2).sum(2) / area, torch.zeros_like(area))
            content = src + (masks * shift[:, :, None, None]).sum(1, keepdim=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            spec = self.model.spec
            r = self.model(lab, style, noise, src if spec.image_input or spec.bone_source else None)
            fr = self.vgg(ct_to_vgg_input(r.float()))
            with torch.no_grad():
                fo = self.vgg(ct_to_vgg_input(content))
        fr = {k: v.float() for k, v in fr.items()}
        fo = {k: v.float() for k, v in fo.items()}
        loss, parts = self.loss(fr, fo, r, lab, masks, tsel, msel, style, self.job.nps, g)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.opt.step()
        self.sched.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}


# --- the public entry points --------------------------------------------------------------------------

def train_generators(source: str | Path, styles: str | Path, out: str | Path, cfg: GeneratorConfig | None = None,
                     resume: bool = False, progress: bool = True) -> list[Path]:
    """Train one generator per style slice (or one conditional generator for all) and return the model
    folders. See the module docstring for the folder layout."""
    cfg = cfg or GeneratorConfig.preset("quick")
    source, styles, out = Path(source), Path(styles), Path(out)
    check_output_folder(out, [source, styles])
    ds, src = load_source(source)
    ss = load_styles(styles, ds.schema)
    if ss.schema.to_labels_dict() != ds.schema.to_labels_dict():
        raise InputError(styles / "styles.json", f"label schema {ss.schema.to_labels_dict()} differs from the "
                         f"source dataset's {ds.schema.to_labels_dict()}", "use style label maps in the source schema")
    records = [{"index": s.index, "case_id": s.case_id, "slice": s.slice, "tags": s.tags} for s in ss.styles]
    extra = {"source": str(source.resolve()), "styles_folder": str(styles.resolve()),
             "source_slices": int(len(src.images))}
    folders = fit_generators(src.images, src.labels, [s.hu for s in ss.styles], [s.label_map for s in ss.styles],
                             records, out, cfg, ds.schema, extra, resume, progress)
    log.info("trained %d generator(s) into %s", len(folders), out)
    return folders


def fit_generators(images: np.ndarray, labels: np.ndarray, style_hu: list[np.ndarray], style_labels: list[np.ndarray],
                   records: list[dict[str, Any]], out: str | Path, cfg: GeneratorConfig, schema,
                   extra: dict[str, Any] | None = None, resume: bool = False, progress: bool = True) -> list[Path]:
    """The training core of :func:`train_generators` on in-memory arrays: source slices ``images`` (N, H, W) HU
    and ``labels`` (N, H, W), style slices and their label maps, one record per style (``index``, ...)."""
    from styleseg.runs import choose_device

    out = Path(out)
    a, o = cfg.arch, cfg.optim
    src = Source(np.asarray(images), np.asarray(labels))
    for rec, names in zip(records, absent_structures(src.labels, style_labels, schema), strict=True):
        if names:
            log.warning("style %d (%s slice %s) holds no %s: its generator %s there", rec["index"], rec.get("case_id"),
                        rec.get("slice"), ", ".join(names), "borrows texture and takes the source's mean"
                        if cfg.loss.fill_absent else "learns no texture and draws 0 HU")
    extra = dict(extra or {})
    device = choose_device(o.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    num_classes = schema.num_classes
    if a.bone_hu > 0 and "body" in schema.names:  # generator segments = schema + derived bone (last class)
        bone = (schema.value("body"), a.bone_hu, num_classes, a.bone_low_hu)
        src = Source(src.images, add_bone_segment(src.labels, src.images, *bone))
        style_labels = [add_bone_segment(lab, h, *bone) for h, lab in zip(style_hu, style_labels, strict=True)]
        num_classes += 1
    layers = tuple(dict.fromkeys((*cfg.loss.style_layers, *cfg.loss.content_layers)))
    vgg = VGG19Features(cfg.vgg_weights or None, layers=layers).to(device)
    targets, means = compute_targets(vgg, style_hu, style_labels, num_classes, cfg.loss.style_layers, device)
    if cfg.loss.fill_absent:
        targets, means, lent = fill_absent(targets, means, style_labels, src.images, src.labels)
        extra["borrowed_textures"] = [{"style": records[s]["index"], "segment": k, "from": j} for s, k, j in lent]
    steps = max(1, int(round(o.epochs * len(src.images) / o.batch))) if o.epochs > 0 else o.steps
    uniform = (num_classes - 1,) if a.bone_source and num_classes > schema.num_classes else ()
    tex = [texture_init(h, lab, num_classes, a.noise_kernel, a.noise_init, uniform)
           for h, lab in zip(style_hu, style_labels, strict=True)]
    filters = torch.from_numpy(np.stack([t[0] for t in tex]))
    amps = torch.from_numpy(np.stack([t[1] for t in tex]))
    nps = None
    if cfg.loss.nps_weight > 0:  # ROIs must fit in a crop (>= 16) with the 3-px erosion on both sides
        nps = nps_targets(style_hu, style_labels, schema, min(cfg.loss.nps_roi, o.crop - 6), device)
    out.mkdir(parents=True, exist_ok=True)
    if a.conditional:
        jobs = [_Job(out / "conditional", src, targets, means, records, o.conditional_steps or 2 * steps,
                     (filters, amps), nps)]
    else:
        jobs = [_Job(out / f"style_{rec['index']:02d}", src,
                     StyleTargets({n: g[k:k + 1] for n, g in targets.grams.items()}, targets.present[k:k + 1]),
                     means[k:k + 1], [rec], steps, (filters[k:k + 1], amps[k:k + 1]),
                     nps.take(k) if nps is not None else None) for k, rec in enumerate(records)]
    return [_fit_one(job, vgg, cfg, num_classes, schema, device, resume, progress, extra) for job in jobs]
