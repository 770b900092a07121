"""Segmentation training: the paper's U-Net on native-spacing crops, partial labels, exact resume, DDP.

- Data (:mod:`styleseg.seg.data`): every labelled (``labelsTr``) case of one or several datasets (e.g.
  source + augmented), augmented crops at native pixel spacing; the split is by patient and recorded in
  model.json; the best epoch on mean validation Dice (organs, not body) is kept.
- Input encoding (:class:`styleseg.seg.inputs.InputSpec`): written into model.json, read by the predictor.
- Loss: Dice + CE with the marginal treatment of unannotated structures (:mod:`styleseg.seg.losses`).
- Bookkeeping (:class:`styleseg.trainer.TrainingRun`): full-state checkpoints (model, optimiser, scheduler,
  scaler, sampler and counters, RNG states), so an interrupted run resumed gives bit-identical weights;
  a JSON-lines log per epoch; progress with ETA; rank-0 writes.
- DDP: under ``torchrun`` every rank draws the same global batch from the shared sampler and trains on its
  shard (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from styleseg.config import check_preset, config_hash, new_option, to_dict
from styleseg.errors import ConfigError, InputError
from styleseg.io.atomic import check_output_folder
from styleseg.seg.data import Batcher, PairBatcher, TrainCase, load_cases, split_cases
from styleseg.seg.inputs import InputSpec
from styleseg.seg.validate import validation_dice
from styleseg.trainer import PolyLR, distributed_context, resolve_amp, state_hash

log = logging.getLogger("styleseg.seg.train")

CATCH_ALL_NAMES = ("body",)  # with background: classes that absorb unannotated structures


@dataclass(frozen=True)
class SegTrainConfig:
    """Segmentation training settings (presets: "quick" = 2 CPU cores, "paper" = one GPU).

    ``downsample`` > 1 is the low-resolution comparison arm only (train and predict on slices
    area-averaged by that factor); the default trains at native pixel spacing.
    """

    preset_name: str = "quick"
    base_channels: int = 16
    depth: int = 4
    windows: tuple[str, ...] = ("soft_tissue",)
    crop: int = 160
    batch_size: int = 8
    epochs: int = 12
    steps_per_epoch: int = 150  # 0: one pass over the training slices per epoch
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    marginal_loss: bool = True  # False: unannotated structures are taught as background (for comparison)
    val_fraction: float = 0.2
    patience: int = 0  # early stopping after this many epochs without improvement (0: off)
    seed: int = 0
    # autocast precision: "auto" is bf16 where the hardware computes it natively (trainer.fast_bf16), else float32
    amp: Literal["none", "auto", "bf16", "fp16"] = "none"
    foreground_prob: float = 0.6
    rotate_deg: float = 10.0
    scale_min: float = 0.9
    scale_max: float = 1.1
    elastic_prob: float = 0.3
    downsample: int = 1
    # 2.5D input: this many neighbouring slices on each side enter as extra channels (0: plain 2D, the paper);
    # at the ends of a volume the edge slice is repeated
    context: int = 0
    # two position channels: each pixel's place in its slice's body box (-1..1, right to left and front to
    # back), so a crop showing one lung knows which side it is on (beyond the paper). Off in the presets, which
    # keep the paper's U-Net for the comparison of arms; the pipeline's "position" arm turns it on
    position: bool = new_option(False)
    # beyond the paper: weight of the paired consistency term (the mean squared difference of the softmax of a
    # source crop and of the same crop of one of its restyled versions; seg.losses.consistency_loss), trained
    # on an augmented dataset in paired batches (seg.data.PairBatcher); 0: off
    consistency_weight: float = new_option(0.0)
    # validate each epoch on at most this many evenly spaced slices of each validation case (0: every slice); on
    # a CPU whole 512 x 512 volumes make validation cost as much as the epoch's training
    val_slices: int = new_option(0)
    # the share of the training steps run at the full learning rate before the poly decay starts (0: nnU-Net's
    # decay from the first step). A short schedule that decays from the start spends its late steps at a small
    # rate, which is when a small, low-contrast structure (the spinal cord) is first learned (BENCHMARKS.md)
    lr_hold: float = new_option(0.0)
    # beyond the paper: the share of training samples drawn from the real (annotated, acquired) cases when the
    # training set also holds generated or pseudo-labelled ones; unset, every slice is equally likely, so with n
    # styles n of every n + 1 samples are generated. Each pool is sampled uniformly over its slices
    real_share: float | None = new_option(None)
    # beyond nnU-Net: weight each pixel's cross-entropy by its label's share of the batch to the power -ce_balance
    # (seg.losses.marginal_dice_ce); 0: the plain mean, where a structure of a few dozen pixels per slice (the
    # spinal cord) is found only after a long plateau (BENCHMARKS.md)
    ce_balance: float = new_option(0.0)
    # ce_balance falls linearly to 0 over the training's steps: rare structures found early, the last steps weigh
    # pixels as plain cross-entropy does, so the final model is not biased towards the rare labels
    ce_balance_decay: bool = new_option(False)

    def __post_init__(self) -> None:
        check_preset(self.preset_name)
        try:
            _ = self.inputs  # validates windows, context and downsample
        except ConfigError as e:
            raise ConfigError(f"train_seg.{e}") from e
        for name in ("depth", "base_channels", "batch_size", "crop", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train_seg.{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch < 0 or self.patience < 0:
            raise ConfigError("train_seg.steps_per_epoch and patience must be >= 0 (0: one pass / no early stop)")
        if not self.lr > 0 or self.weight_decay < 0 or self.dice_weight < 0 or self.ce_weight < 0:
            raise ConfigError("train_seg: lr must be > 0; weight_decay, dice_weight and ce_weight >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("train_seg.val_fraction must be in [0, 1)")
        if not all(0.0 <= v <= 1.0 for v in (self.foreground_prob, self.elastic_prob, self.ce_balance)):
            raise ConfigError("train_seg.foreground_prob, elastic_prob and ce_balance must be in [0, 1]")
        if not 0.0 <= self.lr_hold < 1.0:
            raise ConfigError(f"train_seg.lr_hold must be in [0, 1) (a share of the steps), got {self.lr_hold}")
        if self.val_slices < 0:
            raise ConfigError(f"train_seg.val_slices must be >= 0 (0: every slice), got {self.val_slices}")
        if self.consistency_weight < 0 or (self.consistency_weight > 0 and self.batch_size % 2):
            raise ConfigError("train_seg.consistency_weight must be >= 0, and > 0 needs an even batch_size (pairs)")
        if self.real_share is not None and not 0.0 <= self.real_share <= 1.0:
            raise ConfigError(f"train_seg.real_share must be in [0, 1] (a share of the samples), got {self.real_share}")
        if self.real_share is not None and self.consistency_weight > 0:
            raise ConfigError("train_seg.real_share does not apply with consistency_weight > 0 (every paired batch is "
                              "half source, half restyled); unset one of them")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError("train_seg: need 0 < scale_min <= scale_max")
        if self.crop % 2**self.depth:
            raise ConfigError(f"train_seg.crop ({self.crop}) must be a multiple of 2**depth ({2**self.depth})")

    @property
    def inputs(self) -> InputSpec:
        """The model-input encoding these settings train (written into model.json)."""
        return InputSpec(windows=self.windows, context=self.context, position=self.position,
                         downsample=self.downsample)

    @classmethod
    def preset(cls, name: str) -> SegTrainConfig:
        check_preset(name)
        if name == "quick":
            return cls()
        return cls(preset_name="paper", base_channels=64, depth=4, crop=512, batch_size=16, epochs=30,
                   steps_per_epoch=0, lr=1e-3, amp="auto", patience=10)


def _init_weights(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model.json and weights of the finished model a fine-tuning starts from."""
    from styleseg.runs import read_model_folder

    meta, sd = read_model_folder(folder, "segmentation")
    if not meta.get("complete", True):
        raise InputError(Path(folder) / "model.json", "this model's training has not finished",
                         "finish it (train-seg --resume) before starting from it")
    return meta, sd


def _check_init(folder: Path, init: dict[str, Any], meta: dict[str, Any]) -> None:
    """A model to start from must have the new U-Net's architecture, labels and input channels."""
    keys = ["architecture", "labels", *InputSpec().to_model_json(), "position_smooth_px"]
    diff = [k for k in keys if init.get(k) != meta.get(k)]
    if diff:
        raise InputError(Path(folder) / "model.json", f"cannot start from this model: it differs in {', '.join(diff)} "
                         "from the U-Net being trained", "start from a model trained with the same labels and "
                         "[train_seg] windows, context, position, base_channels and depth")


@dataclass
class _Setup:
    """Everything one training run works with (built once, before the loop)."""

    cfg: SegTrainConfig
    out: Path
    schema: Any
    train_cases: list[TrainCase]
    val_set: list[TrainCase]
    batcher: Batcher
    catch_all: list[int]
    organs: tuple[int, ...]
    model: Any
    net: Any
    opt: Any
    sched: Any
    scaler: Any
    device: Any
    amp: str  # the precision this run computes in: cfg.amp with "auto" resolved for this device
    steps_per_epoch: int
    meta: dict[str, Any]
    rank: int
    world: int
    distributed: bool


def _setup(datasets: list[Path], out: Path, cfg: SegTrainConfig, val_cases: Sequence[str] | None,
           extra_transform: Callable | None, rank: int, world: int, distributed: bool,
           init: list[str]) -> tuple[_Setup, str]:
    import torch

    from styleseg.data.transforms import TrainAugment, TrainAugmentConfig
    from styleseg.runs import seed_everything
    from styleseg.seg.unet import UNet, UNetSpec

    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    seed_everything(cfg.seed)
    spec_in = cfg.inputs
    cases, schema = load_cases(datasets, cfg.downsample)
    train_cases, val_set = split_cases(cases, cfg.val_fraction, cfg.seed, val_cases)
    if not train_cases:
        raise ConfigError("no training case left after the validation split; lower val_fraction")
    catch_all = [0] + [schema.value(n) for n in CATCH_ALL_NAMES if n in schema.names]
    organs = tuple(v for v in schema.values if v not in catch_all)
    aug = TrainAugment(TrainAugmentConfig(crop=cfg.crop, rotate_deg=cfg.rotate_deg,
                                          scale=(cfg.scale_min, cfg.scale_max), elastic_prob=cfg.elastic_prob,
                                          foreground_prob=cfg.foreground_prob), organs)
    batcher = (PairBatcher(train_cases, aug, spec_in, cfg.seed, extra_transform) if cfg.consistency_weight > 0
               else Batcher(train_cases, aug, spec_in, cfg.seed, extra_transform, real_share=cfg.real_share))
    steps_per_epoch = cfg.steps_per_epoch or max(1, len(batcher.index) // cfg.batch_size)
    arch = UNetSpec(in_channels=spec_in.in_channels, num_classes=schema.num_classes,
                    base_channels=cfg.base_channels, depth=cfg.depth)
    # channels-last: the layout oneDNN (CPU, incl. AMX bf16) and cuDNN convolve fastest
    model = UNet(arch).to(device, memory_format=torch.channels_last)
    if cfg.optimizer == "adamw":  # fused: one kernel for all parameters instead of ~10 ops per tensor
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                       fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.99, nesterov=True,
                              weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, PolyLR(cfg.epochs * steps_per_epoch, cfg.lr_hold))
    amp = resolve_amp(cfg.amp, device)
    if cfg.amp == "auto":
        log.info("amp auto: %s on %s", "bf16" if amp == "bf16" else "float32 (no native bf16)", device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    net: torch.nn.Module = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    # the split is part of what a checkpoint was trained on: one of another split is not resumed
    chash = config_hash(cfg, extra=[str(d.resolve()) for d in datasets]
                        + ["val:" + ",".join(c.key for c in val_set), "train:" + ",".join(c.key for c in train_cases)]
                        + init)
    meta = {"architecture": arch.to_json(), "labels": schema.to_labels_dict(), **spec_in.to_model_json(),
            "catch_all": catch_all, "config": to_dict(cfg), "config_hash": chash,
            "split": {"train": [c.key for c in train_cases], "val": [c.key for c in val_set]},
            "datasets": [str(d) for d in datasets],
            "train_spacing_mm": float(np.median([c.spacing[0] for c in train_cases])),
            "orientation": "axial, canonical LPS in-plane (identity direction)", "amp": amp}
    return _Setup(cfg, out, schema, train_cases, val_set, batcher, catch_all, organs, model, net, opt, sched,
                  scaler, device, amp, steps_per_epoch, meta, rank, world, distributed), chash


def _step(s: _Setup, st: dict[str, Any]) -> float:
    import torch

    from styleseg.seg.losses import marginal_dice_ce

    cfg = s.cfg
    x, y, ann = s.batcher.next(cfg.batch_size, s.rank, s.world)
    x, y = x.to(s.device), y.to(s.device)
    if not cfg.marginal_loss:
        ann = torch.ones_like(ann)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.amp)
    with torch.autocast(s.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = s.net(cfg.inputs.network_input(x).contiguous(memory_format=torch.channels_last))
    balance = cfg.ce_balance
    if cfg.ce_balance_decay:
        balance *= max(0.0, 1.0 - st["global_step"] / (cfg.epochs * s.steps_per_epoch))
    loss = marginal_dice_ce(logits, y, ann, s.catch_all, cfg.dice_weight, cfg.ce_weight, ce_balance=balance)
    if cfg.consistency_weight > 0:  # PairBatcher: first half source crops, second half their restyled versions
        from styleseg.seg.losses import consistency_loss

        half = logits.shape[0] // 2
        loss = loss + cfg.consistency_weight * consistency_loss(logits[:half], logits[half:])
    s.opt.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.step(s.opt)
    s.scaler.update()
    s.sched.step()
    st["step_in_epoch"] += 1
    st["global_step"] += 1
    st["loss_sum"] += float(loss.detach())
    st["loss_n"] += 1
    return st["loss_sum"] / st["loss_n"]


def _end_epoch(s: _Setup, st: dict[str, Any], run: Any) -> None:
    """Validate, keep the best epoch's weights in the model folder (marked incomplete), log the epoch."""
    import torch

    from styleseg.runs import write_model_folder

    if s.distributed:  # make BN buffers identical on every rank (parameters already are)
        for b in s.model.buffers():
            torch.distributed.broadcast(b, 0)
    t0 = time.perf_counter()
    val = validation_dice(s.model, s.val_set, s.schema, s.cfg.inputs, 2**s.cfg.depth, s.device, s.rank, s.world,
                          s.distributed, s.cfg.val_slices, s.amp) if s.val_set else {}
    val_s = time.perf_counter() - t0
    scores = [val[s.schema.name(v)] for v in s.organs if s.schema.name(v) in val]
    score = float(np.mean(scores)) if scores else float("nan")
    rec = {"epoch": st["epoch"] + 1, "step": st["global_step"], "loss": st["loss_sum"] / max(st["loss_n"], 1),
           "lr": s.sched.get_last_lr()[0], "val_dice": val, "val_mean_organs": score,
           "time_s": round(st["epoch_time"], 4), "val_s": round(val_s, 4)}
    if not s.val_set or (score == score and score > st["best_score"]):
        st.update(best_score=score if s.val_set else -1.0, best_epoch=st["epoch"] + 1, best_val=val, bad_epochs=0)
        if s.rank == 0:
            write_model_folder(s.out, "segmentation", {**s.meta, "best_epoch": st["best_epoch"],
                                                       "best_val_dice": val, "complete": False},
                               s.model.state_dict())
    else:
        st["bad_epochs"] += 1
    run.log(rec)
    log.info("epoch %d: loss %.4f val %s", rec["epoch"], rec["loss"], {k: round(v, 3) for k, v in val.items()})


def _finalise(s: _Setup, st: dict[str, Any]) -> None:
    """Mark the model folder complete (best epoch's weights); check that DDP ranks agree."""
    from styleseg.runs import read_model_folder, write_model_folder

    final: dict[str, Any] = {"epochs_run": st["epoch"], "steps": st["global_step"]}
    if s.distributed:
        import torch.distributed as dist

        hashes: list[Any] = [None] * s.world
        dist.all_gather_object(hashes, state_hash(s.model.state_dict()))
        final["ddp"] = {"world_size": s.world, "final_weight_hash_per_rank": hashes}
        if len(set(hashes)) != 1:
            raise RuntimeError(f"DDP ranks ended with different weights: {hashes}")
    if s.rank == 0:
        best_meta, best_sd = read_model_folder(s.out, "segmentation")
        kept = {k: v for k, v in best_meta.items() if k not in ("kind", "format_version")}
        write_model_folder(s.out, "segmentation", {**kept, **final, "complete": True}, best_sd)
    if s.distributed:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def train_segmentation(datasets: Sequence[Path], out: Path, cfg: SegTrainConfig, resume: bool = False,
                       val_cases: Sequence[str] | None = None, extra_transform: Callable | None = None,
                       progress: bool = True, stop_after_steps: int | None = None,
                       init_from: Path | None = None) -> Path:
    """Train a U-Net and write a segmentation model folder at ``out`` (model.json + weights.pt of the
    best validation epoch, or the last epoch without validation), ``checkpoint.pt`` and
    ``train_log.jsonl``. ``val_cases=[]`` disables validation; ``stop_after_steps`` interrupts the
    run after that many optimiser steps (with a checkpoint), as a crash would; ``resume=True`` then
    continues it exactly (a checkpoint of another config raises CheckpointMismatch).
    ``extra_transform(hu_crop, rng) -> hu_crop`` is the hook of intensity comparison arms (must be
    picklable for DDP spawn). ``init_from``: a segmentation model folder whose weights the U-Net starts from
    (fine-tuning; same architecture, labels and input encoding) instead of a random initialisation."""
    from styleseg.trainer import TrainingRun

    out = Path(out)
    datasets = [Path(d) for d in datasets]
    check_output_folder(out, datasets)
    rank, world, distributed = distributed_context()
    if cfg.batch_size % world:
        raise ConfigError(f"train_seg.batch_size ({cfg.batch_size}) must be divisible by the {world} processes")
    if not resume and (out / "model.json").exists():
        raise InputError(out, "model folder already exists", "choose another --out, or pass --resume to continue")
    if resume and not (out / "checkpoint.pt").exists():
        raise InputError(out / "checkpoint.pt", "nothing to resume: no checkpoint", "start without --resume")
    init_meta, init_sd = _init_weights(init_from) if init_from is not None else ({}, None)
    init = [f"init:{init_meta.get('config_hash')}:{state_hash(init_sd)}"] if init_sd is not None else []
    s, chash = _setup(datasets, out, cfg, val_cases, extra_transform, rank, world, distributed, init)
    if init_from is not None and init_sd is not None:
        _check_init(Path(init_from), init_meta, s.meta)
        s.model.load_state_dict(init_sd)
        s.meta["init_from"] = {"model": str(init_from), "config_hash": init_meta.get("config_hash")}
    import torch

    run = TrainingRun(out, chash, rank=rank, progress=progress,
                      barrier=torch.distributed.barrier if distributed else None)
    st: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": -1.0, "best_epoch": -1,
                          "best_val": {}, "bad_epochs": 0, "loss_sum": 0.0, "loss_n": 0, "epoch_time": 0.0}
    ck = run.load(resume, map_location=s.device)
    if ck is not None:
        s.model.load_state_dict(ck["model"])
        s.opt.load_state_dict(ck["optimizer"])
        s.sched.load_state_dict(ck["scheduler"])
        s.scaler.load_state_dict(ck["scaler"])
        s.batcher.rng.bit_generator.state = ck["sampler"]
        st.update(ck["counters"])
        log.info("resuming %s at epoch %d step %d", out, st["epoch"], st["global_step"])

    def save() -> None:
        run.save({"model": s.model.state_dict(), "optimizer": s.opt.state_dict(), "scheduler": s.sched.state_dict(),
                  "scaler": s.scaler.state_dict(), "sampler": s.batcher.rng.bit_generator.state,
                  "counters": dict(st), "config": to_dict(cfg)})

    t0 = time.perf_counter()
    with run.progress("training", cfg.epochs * s.steps_per_epoch, st["global_step"]) as bar:
        while st["epoch"] < cfg.epochs:
            s.net.train()
            while st["step_in_epoch"] < s.steps_per_epoch:
                if stop_after_steps is not None and st["global_step"] >= stop_after_steps:
                    st["epoch_time"] += time.perf_counter() - t0
                    save()
                    log.info("stopped after %d steps (checkpoint written)", st["global_step"])
                    return out
                loss = _step(s, st)
                bar.advance(f"epoch {st['epoch'] + 1}/{cfg.epochs} loss {loss:.3f}")
            st["epoch_time"] += time.perf_counter() - t0
            _end_epoch(s, st, run)
            st.update(epoch=st["epoch"] + 1, step_in_epoch=0, loss_sum=0.0, loss_n=0, epoch_time=0.0)
            save()
            t0 = time.perf_counter()  # an epoch's time_s is its steps: validation is val_s, saving neither
            if cfg.patience and st["bad_epochs"] >= cfg.patience:
                log.info("early stopping: %d epochs without improvement", st["bad_epochs"])
                break
    _finalise(s, st)
    return out
