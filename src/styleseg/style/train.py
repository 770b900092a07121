"""Training of the style generators (paper sec. 2.2): loss = alpha * content (eq. 2) + beta * style (eq. 1).

For each style slice S (or once, for the conditional generator, with a random style per batch element)
the generator learns to turn every source label map into a slice with S's texture: the content target is
the source slice O whose label map is the input, the style targets are S's per-segment Gram matrices,
computed ONCE on the whole style slice at native spacing. Training uses random crops at native spacing
(the generator is fully convolutional and Gram matrices are area-normalised averages, so crops carry
the style); nothing is resampled.

Beyond the paper, ``gamma`` weights a per-segment mean-HU term against the style slice's segment means
(the VGG losses see the soft-tissue window only; lungs and bone lie outside it). It is logged separately.
With the residual generator (the default, see :mod:`styleseg.style.generator`) the segment means are
exact by construction and the term only reports them. The content target O is intensity-matched
(``content_match_means``): each segment of O is shifted to the style slice's mean of that segment, so
eq. (2) asks for the source's anatomy, not for its (other) contrast and brightness, and no longer pulls
against the style's intensities. The generator's noise colouring filter and amplitudes start from the
style slice's measured NPS (:func:`texture_init`, ``noise_init="nps"``) and are refined by eq. (1).

Output folder::

    OUT/style_00/   model.json + weights.pt (runs.write_model_folder, kind "generator"), checkpoint.pt
                    (full state, resumable exactly), train_log.jsonl, loss_curve.png
    OUT/style_01/ ...            (separate generators)   or   OUT/conditional/ (one for all styles)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from styleseg.config import check_preset, config_hash, new_option, to_dict
from styleseg.errors import ConfigError, InputError
from styleseg.style.generator import GeneratorSpec, StyleGenerator, add_bone_segment, save_generator
from styleseg.style.losses import (
    StyleTargets,
    nps_texture_loss,
    radial_bins,
    segment_content_loss,
    segment_masks,
    segment_mean_loss,
    segment_style_loss,
    style_log_nps,
    style_targets,
)
from styleseg.style.vgg import LAYER_NAMES, VGG19Features, ct_to_vgg_input

log = logging.getLogger("styleseg.style.train")

NPS_SOFT_TISSUE = ("heart", "body")  # segments whose texture the NPS term compares


@dataclass
class NpsTargets:
    """Per-style log10 radial NPS targets (S, nb), which styles have one (S,), and the estimator's bins."""

    log_nps: torch.Tensor
    has: torch.Tensor
    bins: torch.Tensor
    valid: torch.Tensor
    classes: tuple[int, ...]
    roi: int

    def take(self, k: int) -> NpsTargets:
        return NpsTargets(self.log_nps[k:k + 1], self.has[k:k + 1], self.bins, self.valid, self.classes, self.roi)


def nps_targets(style_hu: list[np.ndarray], style_labels: list[np.ndarray], schema, roi: int,
                device: torch.device) -> NpsTargets:
    """The NPS term's targets for every style slice. Like the texture metric (``sim.nps.slice_nps``), a
    slice whose flat soft tissue holds no ``roi``-px ROI is measured with smaller ones: the largest of
    roi, 2/3 roi, 1/2 roi that every style allows is used (a style with none at all gets no NPS term)."""
    logs: list[torch.Tensor | None] = []
    for size in (roi, max(8, roi * 2 // 3), max(8, roi // 2)):
        bins, valid = radial_bins(size)
        logs = [style_log_nps(h, lab, bins, size) for h, lab in zip(style_hu, style_labels, strict=True)]
        if all(lg is not None for lg in logs):
            break
    for i, lg in enumerate(logs):
        if lg is None:
            log.warning("style %d: no near-uniform soft-tissue ROI; its NPS texture term is off", i)
    has = torch.tensor([lg is not None for lg in logs])
    tgt = torch.stack([lg if lg is not None else torch.zeros(bins.shape[1]) for lg in logs])
    classes = tuple(schema.value(n) for n in NPS_SOFT_TISSUE if n in schema.names)
    log.info("NPS texture term: %d-px ROIs, %d of %d styles", size, int(has.sum()), len(logs))
    return NpsTargets(tgt.to(device), has.to(device), bins.to(device), valid.to(device), classes, size)


@dataclass(frozen=True)
class GeneratorConfig:
    """Generator training settings. ``steps`` is per separate generator; the conditional generator runs
    ``conditional_steps`` (0: 2 x ``steps``) for all styles together. ``epochs`` > 0 overrides ``steps``
    with epochs x (number of source slices) / batch."""

    crop: int = 64
    steps: int = 100
    epochs: int = 0
    conditional_steps: int = 0
    batch: int = 2
    lr: float = 1e-3
    alpha: float = 1.0
    beta: float = 10.0
    gamma: float = 10.0
    nps_weight: float = 100.0  # beyond the paper: the NPS texture term (losses.nps_texture_loss); 0: off
    nps_roi: int = 24
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1")
    style_weights: tuple[float, ...] = (1.0, 1.0)
    content_layers: tuple[str, ...] = ("relu2_1",)
    output: str = "residual"
    noise_kernel: int = 11
    noise_init: str = "nps"
    content_match_means: bool = True
    train_texture: bool = False
    base: int = 16
    n_res: int = 3
    image_input: bool = False
    # with image_input: the source slice passes through, the network changes only its texture (generator.py)
    source_skip: bool = new_option(False)
    source_sigma: float = new_option(1.0)  # px: low-pass of the source that passes through
    bone_hu: float = 300.0  # beyond the paper: a "bone" segment derived from HU inside the body (0: off)
    conditional: bool = False
    bf16: bool = False
    vgg_weights: str = ""
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for n in (*self.style_layers, *self.content_layers):
            if n not in LAYER_NAMES:
                raise ConfigError(f"[generators]: unknown VGG layer {n!r}; valid: {', '.join(LAYER_NAMES)}")
        if len(self.style_weights) != len(self.style_layers):
            raise ConfigError("[generators]: style_weights needs one weight per style layer")
        if self.crop < 16 or self.crop % 4:
            raise ConfigError("[generators].crop must be a multiple of 4 and >= 16")
        if self.steps < 1 or self.batch < 1 or self.lr <= 0:
            raise ConfigError("[generators]: steps, batch and lr must be positive")
        if self.output not in ("residual", "tanh"):
            raise ConfigError(f"[generators].output must be 'residual' or 'tanh', got {self.output!r}")
        if self.source_skip and not (self.image_input and self.output == "residual"):
            raise ConfigError("[generators].source_skip = true needs image_input = true (the source slice is what "
                              "passes through) and output = 'residual'")
        if self.noise_init not in ("nps", "white"):
            raise ConfigError(f"[generators].noise_init must be 'nps' or 'white', got {self.noise_init!r}")
        if self.nps_weight < 0 or self.nps_roi < 8:
            raise ConfigError(f"[generators]: nps_weight must be >= 0 and nps_roi >= 8, got {self.nps_weight}, "
                              f"{self.nps_roi}")
        if self.noise_kernel < 1 or self.noise_kernel % 2 == 0:
            raise ConfigError("[generators].noise_kernel must be a positive odd number")

    @classmethod
    def preset(cls, name: str) -> GeneratorConfig:
        """"quick": minutes on 2 CPU cores (crops of 64, VGG layers up to relu2_1, a small net); "paper": the
        paper's setting on a GPU (its 512 x 512 slices at native spacing, 100 epochs, Gatys' layers, bf16),
        trained on 256-px crops of those slices in batches of 16: the same pixels per step as 4 whole slices,
        a quarter of the cost per slice visit (the texture lives at native spacing and Gram statistics are
        area averages, so crops carry the style; the generator is applied to whole slices). ``crop = 512``
        trains on whole slices, as the paper did."""
        check_preset(name)
        if name == "quick":
            return cls()
        return cls(crop=256, epochs=100, batch=16, lr=1e-3, base=32, n_res=5,
                   style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
                   style_weights=(1.0, 1.0, 1.0, 1.0, 1.0), content_layers=("relu4_2",), bf16=True,
                   log_every=50, checkpoint_every=500)


# --- data ---------------------------------------------------------------------------------------------

@dataclass
class _Source:
    images: np.ndarray  # (N, H, W) int16 HU
    labels: np.ndarray  # (N, H, W) uint8


def load_source(source: Path):
    """The labelled source slices (all slices of labelled cases that contain a label)."""
    from styleseg.data.slices import SliceStore
    from styleseg.io.dataset import Dataset

    ds = Dataset(source)
    store = SliceStore.from_dataset(ds, label_role="labelsTr", only_labelled_slices=True)
    if len(store) == 0 or store.labels is None:
        raise InputError(source, "the source dataset has no labelled slices (labelsTr)",
                         "generators learn from annotated source slices; import labelled data first")
    return ds, _Source(store.images, store.labels)


def load_styles(styles: Path, schema):
    """The style set, checked: every style slice needs a label map whose values are in the schema."""
    from styleseg.style.styleset import STYLES_JSON, StyleSet, label_name

    ss = StyleSet.load(styles)
    ss.require_labels(styles)
    if not ss.styles:
        raise InputError(Path(styles) / STYLES_JSON, "the style set is empty", "pick at least one style slice")
    for s in ss.styles:
        schema.check_label_values(s.label_map, str(Path(styles) / label_name(s.index)))
    return ss


def compute_targets(vgg: VGG19Features, hu: list[np.ndarray], labels: list[np.ndarray], num_classes: int,
                    layers: tuple[str, ...], device: torch.device) -> tuple[StyleTargets, torch.Tensor]:
    """Per-segment Gram targets (computed once, whole slice, native spacing) and mean HU per segment."""
    per, means = [], []
    with torch.no_grad():
        for h, lab in zip(hu, labels, strict=True):
            x = torch.from_numpy(np.asarray(h, np.float32))[None, None].to(device)
            lt = torch.from_numpy(np.asarray(lab, np.int64))[None].to(device)
            masks = segment_masks(lt, num_classes)
            feats = vgg(ct_to_vgg_input(x))
            per.append(style_targets({k: feats[k].float() for k in layers}, masks, layers))
            area = masks.flatten(2).sum(2)
            means.append((x * masks).flatten(2).sum(2) / area.clamp_min(1))
    t = StyleTargets({k: torch.cat([p.grams[k] for p in per]) for k in layers}, torch.cat([p.present for p in per]))
    return t, torch.cat(means)


def _hp_noise_std(hu: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise estimate inside ``mask`` (eroded): 1.4826 MAD of ``hu - G_1px * hu``, in units where
    unit white noise gives 1 (so it is the white-noise-equivalent std of the high-pass band)."""
    from scipy import ndimage as ndi

    m = ndi.binary_erosion(mask, iterations=2)
    if m.sum() < 30:
        return float("nan")
    resid = hu - ndi.gaussian_filter(hu, 1.0)
    v = resid[m]
    white = 0.874  # 1.4826 MAD of (n - G_1px n) for unit white n (measured on 512^2 samples)
    return float(1.4826 * np.median(np.abs(v - np.median(v))) / white)


def texture_init(hu: np.ndarray, label: np.ndarray, num_classes: int, kernel: int = 11,
                 mode: str = "nps") -> tuple[np.ndarray, np.ndarray]:
    """Initial noise colouring filter (k, k; unit energy) and per-segment amplitudes (K,; HU) of a style slice.

    ``mode="nps"``: |H(f)| = sqrt(NPS(f)) from the soft-tissue NPS of the slice (:func:`styleseg.sim.nps.
    slice_nps`, per pixel), zero phase, cropped to k x k and normalised; the soft-tissue amplitude is the
    NPS's noise std. Other segments scale it by their robust high-pass noise relative to soft tissue
    (clipped to [0.3, 3]). ``mode="white"``, or a slice without a usable soft-tissue ROI: a delta filter
    (white noise) with the robust high-pass estimate as amplitude."""
    from styleseg.sim.nps import resample_radial, slice_nps

    hu = np.asarray(hu, np.float64)
    label = np.asarray(label)
    ref = _hp_noise_std(hu, np.isin(label, (3, 6)))
    if not np.isfinite(ref):
        ref = _hp_noise_std(hu, label > 0)
    ref = 10.0 if not np.isfinite(ref) else max(ref, 1.0)
    filt = np.zeros((kernel, kernel))
    filt[kernel // 2, kernel // 2] = 1.0
    soft = ref
    if mode == "nps":
        try:
            r = slice_nps(hu, 1.0, label > 0)
            n = 64
            f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
            mag = np.sqrt(np.maximum(resample_radial(r, np.minimum(f, r.freq[-1])), 0.0))
            mag[0, 0] = 0.0
            h = np.fft.fftshift(np.real(np.fft.ifft2(mag)))
            c, k2 = n // 2, kernel // 2
            filt = h[c - k2:c + k2 + 1, c - k2:c + k2 + 1]
            filt = filt / max(float(np.sqrt((filt**2).sum())), 1e-12)
            soft = float(r.std)
        except ValueError:
            log.info("no soft-tissue NPS in the style slice; white-noise initialisation")
    amps = np.full(num_classes, soft, np.float32)
    for k in range(num_classes):
        e = _hp_noise_std(hu, label == k)
        if np.isfinite(e):
            amps[k] = soft * float(np.clip(e / ref, 0.3, 3.0))
    return filt.astype(np.float32), amps


def sample_batch(src: _Source, crop: int, batch: int, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic batch of crops for (seed, step): resuming reproduces the same batches."""
    from styleseg.data.slices import random_crop_indices

    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, len(src.images), batch)
    h, w = src.images.shape[1:]
    c = min(crop, h - h % 4, w - w % 4)
    imgs, labs = [], []
    for i in idx:
        y0, x0 = random_crop_indices(rng, (h, w), c, weight_mask=src.labels[i] > 0)
        imgs.append(src.images[i, y0:y0 + c, x0:x0 + c])
        labs.append(src.labels[i, y0:y0 + c, x0:x0 + c])
    return np.stack(imgs), np.stack(labs)


# --- one generator -----------------------------------------------------------------------------------

def _fit_one(folder: Path, src: _Source, targets: StyleTargets, means: torch.Tensor, style_records: list[dict],
             vgg: VGG19Features, cfg: GeneratorConfig, num_classes: int, schema, steps: int,
             device: torch.device, resume: bool, progress: bool, extra_json: dict[str, Any],
             texture: tuple[torch.Tensor, torch.Tensor] | None = None, nps: NpsTargets | None = None) -> Path:
    from styleseg.runs import append_jsonl, load_checkpoint, save_checkpoint, seed_everything

    folder.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg, extra_json)
    if resume and (folder / "model.json").exists():
        import json

        if json.loads((folder / "model.json").read_text()).get("config_hash") == chash:
            log.info("%s: already trained with this config, skipped", folder)
            return folder
    n_styles = len(style_records) if cfg.conditional else 1
    body = schema.value("body") if cfg.bone_hu > 0 and "body" in schema.names else -1
    spec = GeneratorSpec(num_classes=num_classes, base=cfg.base, n_res=cfg.n_res, n_styles=n_styles,
                         conditional=cfg.conditional, image_input=cfg.image_input, output=cfg.output,
                         noise_kernel=cfg.noise_kernel, bone_hu=cfg.bone_hu if body >= 0 else 0.0,
                         body_value=body, source_skip=cfg.source_skip,
                         source_sigma=cfg.source_sigma)
    seed_everything(cfg.seed)
    model = StyleGenerator(spec)
    model.init_prior(means.cpu(), targets.present.cpu())
    if texture is not None and cfg.output == "residual":
        model.init_texture(*texture)
    if cfg.output == "residual" and not cfg.train_texture:  # keep the measured NPS texture (see docs/style.md)
        model.noise_filter.requires_grad_(False)
        model.noise_amp.requires_grad_(False)
    model.to(device)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=cfg.lr * 0.1)
    start = 0
    ckpt = folder / "checkpoint.pt"
    logf = folder / "train_log.jsonl"
    if resume and ckpt.exists():
        st = load_checkpoint(ckpt)
        if st.get("config_hash") == chash:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            start = int(st["step"])
            log.info("%s: resuming at step %d/%d", folder, start, steps)
        else:
            log.warning("%s: checkpoint is from another config; starting over", ckpt)
    if start == 0 and logf.exists():
        logf.unlink()
    targets = targets.to(device)
    means = means.to(device)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    t0 = time.perf_counter()
    bar = _progress(progress, f"{folder.name}", steps, start)
    model.train()
    for step in range(start, steps):
        imgs, labs = sample_batch(src, cfg.crop, cfg.batch, cfg.seed, step)
        o = torch.from_numpy(imgs.astype(np.float32))[:, None].to(device)
        lab = torch.from_numpy(labs.astype(np.int64)).to(device)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        noise = torch.randn(lab.shape[0], 1, *lab.shape[1:], generator=g).to(device)
        style = (torch.randint(0, n_styles, (lab.shape[0],), generator=g) if n_styles > 1
                 else torch.zeros(lab.shape[0], dtype=torch.long)).to(device)
        masks = segment_masks(lab, num_classes)
        o_in = o
        tsel = targets.select(style) if n_styles > 1 else targets
        msel = means[style] if n_styles > 1 else means
        if cfg.content_match_means:  # content = the source's anatomy at the style's segment intensities
            area = masks.flatten(2).sum(2).clamp_min(1.0)
            shift = torch.where(tsel.present, msel - (o * masks).flatten(2).sum(2) / area, torch.zeros_like(area))
            o = o + (masks * shift[:, :, None, None]).sum(1, keepdim=True)
        with amp:
            r = model(lab, style, noise, o_in if cfg.image_input else None)
            fr = vgg(ct_to_vgg_input(r.float()))
            with torch.no_grad():
                fo = vgg(ct_to_vgg_input(o))
        fr = {k: v.float() for k, v in fr.items()}
        fo = {k: v.float() for k, v in fo.items()}
        lc = segment_content_loss(fr, fo, masks, cfg.content_layers)
        ls = segment_style_loss(fr, masks, tsel, cfg.style_layers, cfg.style_weights)
        lm = segment_mean_loss(r.float(), masks, msel, tsel.present)
        loss = cfg.alpha * lc + cfg.beta * ls + cfg.gamma * lm
        ln = torch.zeros((), device=device)
        if nps is not None and cfg.nps_weight > 0:
            use = nps.has[style]
            if bool(use.any()):
                ln = nps_texture_loss(r[use].float(), lab[use], nps.log_nps[style[use]], nps.classes, nps.bins,
                                      nps.valid, nps.roi, 4, g)
                loss = loss + cfg.nps_weight * ln
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == steps:
            append_jsonl(logf, {"step": done, "loss": loss.item(), "content": lc.item(), "style": ls.item(),
                                "mean_hu": lm.item(), "nps": ln.item(), "lr": sched.get_last_lr()[0],
                                "seconds": round(time.perf_counter() - t0, 2)})
        if done % cfg.checkpoint_every == 0 or done == steps:
            save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "step": done, "config": to_dict(cfg),
                                   "config_hash": chash})
        if bar is not None:
            bar[0].update(bar[1], advance=1)
    if bar is not None:
        bar[0].stop()
    secs = time.perf_counter() - t0
    save_generator(folder, model.cpu(), schema, style_records, to_dict(cfg),
                   extra={"config_hash": chash, "steps": steps, "train_seconds_last_run": round(secs, 1),
                          **extra_json})
    model.to(device)
    try:
        plot_losses(logf, folder / "loss_curve.png")
    except Exception as e:  # noqa: BLE001 - a figure must not fail a finished training
        log.warning("loss curve not drawn: %s", e)
    return folder


def _progress(enabled: bool, name: str, total: int, start: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                 TimeRemainingColumn())
    p.start()
    return p, p.add_task(name, total=total, completed=start)


def plot_losses(log_path: Path, out: Path) -> Path:
    """Content, style and mean-HU losses against the step (log scale)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from styleseg.io.atomic import atomic_path

    rows = [json.loads(x) for x in Path(log_path).read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    steps = [r["step"] for r in rows]
    for key in ("content", "style", "mean_hu", "nps", "loss"):
        if any(key in r for r in rows) and any(r.get(key, 0) > 0 for r in rows):
            ax.plot(steps, [max(r.get(key, 0.0), 1e-12) for r in rows], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(Path(log_path).parent.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


# --- the public entry point ---------------------------------------------------------------------------

def train_generators(source: str | Path, styles: str | Path, out: str | Path, cfg: GeneratorConfig | None = None,
                     resume: bool = False, progress: bool = True) -> list[Path]:
    """Train one generator per style slice (or one conditional generator for all) and return the model
    folders. See the module docstring for the folder layout."""
    cfg = cfg or GeneratorConfig.preset("quick")
    source, styles, out = Path(source), Path(styles), Path(out)
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
    src = _Source(np.asarray(images), np.asarray(labels))
    extra = dict(extra or {})
    device = choose_device(cfg.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    num_classes = schema.num_classes
    if cfg.bone_hu > 0 and "body" in schema.names:  # generator segments = schema + derived bone (last class)
        bone = (schema.value("body"), cfg.bone_hu, num_classes)
        src = _Source(src.images, add_bone_segment(src.labels, src.images, *bone))
        style_labels = [add_bone_segment(lab, h, *bone) for h, lab in zip(style_hu, style_labels, strict=True)]
        num_classes += 1
    vgg = VGG19Features(cfg.vgg_weights or None, layers=tuple(dict.fromkeys((*cfg.style_layers,
                                                                              *cfg.content_layers)))).to(device)
    targets, means = compute_targets(vgg, style_hu, style_labels, num_classes,
                                     cfg.style_layers, device)
    steps = cfg.steps
    if cfg.epochs > 0:
        steps = max(1, int(round(cfg.epochs * len(src.images) / cfg.batch)))
    tex = [texture_init(h, lab, num_classes, cfg.noise_kernel, cfg.noise_init)
           for h, lab in zip(style_hu, style_labels, strict=True)]
    filters = torch.from_numpy(np.stack([t[0] for t in tex]))
    amps = torch.from_numpy(np.stack([t[1] for t in tex]))
    nps = None
    if cfg.nps_weight > 0:  # ROIs must fit in a crop (>= 16) with the 3-px erosion on both sides
        nps = nps_targets(style_hu, style_labels, schema, min(cfg.nps_roi, cfg.crop - 6), device)
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    if cfg.conditional:
        csteps = cfg.conditional_steps or 2 * steps
        folders.append(_fit_one(out / "conditional", src, targets, means, records, vgg, cfg, num_classes, schema,
                                csteps, device, resume, progress, extra, (filters, amps), nps))
    else:
        for k, rec in enumerate(records):
            t = StyleTargets({n: g[k:k + 1] for n, g in targets.grams.items()}, targets.present[k:k + 1])
            folders.append(_fit_one(out / f"style_{rec['index']:02d}", src, t, means[k:k + 1], [rec], vgg, cfg,
                                    num_classes, schema, steps, device, resume, progress, extra,
                                    (filters[k:k + 1], amps[k:k + 1]), nps.take(k) if nps is not None else None))
    return folders


def with_changes(cfg: GeneratorConfig, **changes: Any) -> GeneratorConfig:
    return dataclasses.replace(cfg, **changes)
