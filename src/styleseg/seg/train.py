"""Segmentation training: the paper's U-Net on native-spacing crops, partial labels, exact resume, DDP.

- Data: every labelled (``labelsTr``) case of one or several datasets (e.g. source + augmented);
  ``labelsRef`` labels are never used. Slices are kept in memory as int16 HU + uint8 labels and
  turned into augmented crops at native pixel spacing (``data.transforms.TrainAugment``).
- Loss: Dice + CE with the marginal treatment of unannotated structures (``seg.losses``).
- Split: patient-level (augmented cases are grouped by ``provenance.source_case``), recorded in
  model.json; the best epoch on mean validation Dice (organs, not body) is kept.
- Exact resume: the sampler is one seeded ``numpy`` generator whose state, together with model,
  optimiser, scheduler, scaler, counters and RNG states, is in ``checkpoint.pt``; an interrupted run
  resumed gives bit-identical weights (tests/seg/test_resume.py).
- DDP: under ``torchrun`` every rank draws the same global batch from the shared sampler and trains
  on its shard (gloo on CPU, nccl on GPU); rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from styleseg.config import check_preset, config_hash, new_option, to_dict
from styleseg.errors import CheckpointMismatch, ConfigError, InputError

log = logging.getLogger("styleseg.seg.train")

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.jsonl"
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
    amp: Literal["none", "bf16", "fp16"] = "none"
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

    def __post_init__(self) -> None:
        from styleseg.data.slices import WINDOWS

        check_preset(self.preset_name)
        bad = [w for w in self.windows if w not in WINDOWS]
        if bad or not self.windows:
            raise ConfigError(f"train_seg.windows: unknown window(s) {bad}; choose from {sorted(WINDOWS)}")
        if self.downsample < 1 or self.depth < 1 or self.base_channels < 1 or self.batch_size < 1:
            raise ConfigError("train_seg: downsample, depth, base_channels and batch_size must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("train_seg.val_fraction must be in [0, 1)")
        if not 0 <= self.context <= 4:
            raise ConfigError(f"train_seg.context ({self.context}) must be 0 (2D) to 4 neighbouring slices per side")
        if self.crop % 2**self.depth:
            raise ConfigError(f"train_seg.crop ({self.crop}) must be a multiple of 2**depth ({2**self.depth})")

    @classmethod
    def preset(cls, name: str) -> SegTrainConfig:
        check_preset(name)
        if name == "quick":
            return cls()
        return cls(preset_name="paper", base_channels=64, depth=4, crop=512, batch_size=16, epochs=30,
                   steps_per_epoch=0, lr=1e-3, amp="bf16", patience=10)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
@dataclass
class _Case:
    key: str
    group: str
    image: np.ndarray  # (z, H, W) int16 HU (float32 if downsampled), canonical orientation
    label: np.ndarray  # (z, H, W) uint8
    annotated: np.ndarray  # (num_classes,) bool
    spacing: tuple[float, float]


def canonical_flips(direction: Sequence[float], path: Any = None) -> tuple[bool, bool]:
    """(flip_y, flip_x) that bring an axial volume to the identity (LPS) in-plane orientation.

    Non-axial or in-plane-rotated volumes are refused: a model trained on axial slices would
    silently mislabel them (left and right lungs are different labels).
    """
    d = np.asarray(direction, float).reshape(3, 3)
    if abs(abs(d[2, 2]) - 1) > 1e-3 or abs(abs(d[0, 0]) - 1) > 1e-3 or abs(abs(d[1, 1]) - 1) > 1e-3:
        raise InputError(path, f"orientation is not axial (direction cosines {np.round(d, 3).tolist()}); "
                         "the U-Net works on axial slices",
                         "reorient the volume to axial LPS first (e.g. SimpleITK.DICOMOrient(img, 'LPS'))")
    return bool(d[1, 1] < 0), bool(d[0, 0] < 0)


def to_canonical(arr: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """Flip (z, y, x) or (y, x) arrays into canonical orientation (an involution: also undoes it)."""
    if flips[0]:
        arr = arr[..., ::-1, :]
    if flips[1]:
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr)


def _load_cases(datasets: Sequence[Path], downsample: int) -> tuple[list[_Case], Any]:
    import torch

    from styleseg.io.dataset import Dataset
    from styleseg.seg.predict import downsample_hu, downsample_label

    cases: list[_Case] = []
    schema = None
    multi = len(datasets) > 1
    for root in datasets:
        ds = Dataset(root)
        if schema is None:
            schema = ds.schema
        elif ds.schema.to_labels_dict() != schema.to_labels_dict():
            raise InputError(Path(root) / "dataset.json", f"label schema {ds.schema.to_labels_dict()} differs "
                             f"from the first dataset's {schema.to_labels_dict()}",
                             "train only on datasets with the same labels")
        for rec in ds.labelled_cases("labelsTr"):
            img = ds.load_image(rec.case_id)
            lab = ds.load_label(rec.case_id, image=img)
            assert lab is not None
            flips = canonical_flips(img.direction, ds.image_path(rec.case_id))
            arr = to_canonical(np.asarray(img.array, np.int16), flips)
            lab_arr = to_canonical(lab.array, flips)
            if downsample > 1:
                arr = downsample_hu(torch.from_numpy(arr.astype(np.float32))[:, None], downsample)[:, 0].numpy()
                lab_arr = downsample_label(torch.from_numpy(lab_arr)[:, None], downsample)[:, 0].numpy()
            ann = np.zeros(ds.schema.num_classes, bool)
            ann[0] = True
            for n in rec.annotated:
                if n in ds.schema.names:
                    ann[ds.schema.value(n)] = True
            prov = rec.extras.get("provenance") or {}
            group = str(prov.get("source_case", rec.case_id)) if isinstance(prov, dict) else rec.case_id
            key = f"{ds.name}/{rec.case_id}" if multi else rec.case_id
            cases.append(_Case(key, group, arr, lab_arr, ann, (img.spacing[0], img.spacing[1])))
    if not cases:
        raise InputError(datasets[0] if datasets else None, "no case with training labels (labelsTr)",
                         "train on an annotated dataset (import one with `styleseg import`)")
    return cases, schema


def patient_split(groups: Sequence[str], val_fraction: float, seed: int,
                  val_cases: Sequence[str] | None = None, keys: Sequence[str] | None = None) -> list[bool]:
    """Per case: True if validation. Whole groups (patients) go to one side; explicit ``val_cases``
    (case keys or group ids) win over the seeded random split."""
    keys = list(keys or groups)
    if val_cases is not None:
        chosen = set(val_cases)
        unknown = chosen - set(keys) - set(groups)
        if unknown:
            raise ConfigError(f"val_cases {sorted(unknown)} are not training cases ({sorted(set(keys))})")
        vg = {g for k, g in zip(keys, groups, strict=True) if k in chosen or g in chosen}
        return [g in vg for g in groups]
    uniq = sorted(set(groups))
    n_val = int(round(val_fraction * len(uniq))) if val_fraction > 0 and len(uniq) >= 2 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(uniq) >= 2 else 0), len(uniq) - 1)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    vg = {uniq[i] for i in perm[:n_val]}
    return [g in vg for g in groups]


class _Batcher:
    """Deterministic global batches: one seeded generator draws slice indices and per-sample seeds,
    so every DDP rank sees the same draw and its state resumes exactly."""

    def __init__(self, cases: list[_Case], augment: Any, windows: Sequence[str], seed: int,
                 extra_transform: Callable | None, context: int = 0, position: bool = False):
        from styleseg.seg.predict import body_frame

        self.cases = cases
        self.context = context
        # per case, per slice body frame of the position channels (found on the whole slice, as at inference)
        self.frames = [body_frame(c.image) for c in cases] if position else None
        self.index = np.array([(ci, z) for ci, c in enumerate(cases) for z in range(c.image.shape[0])], int)
        self.augment = augment
        self.windows = tuple(windows)
        self.extra = extra_transform
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def next(self, batch_size: int, rank: int, world: int):
        import torch

        pick = self.rng.integers(len(self.index), size=batch_size)
        seeds = self.rng.integers(2**63 - 1, size=batch_size)
        imgs, labs, anns = [], [], []
        for j in range(rank, batch_size, world):
            ci, z = self.index[pick[j]]
            case = self.cases[ci]
            srng = np.random.default_rng(int(seeds[j]))
            stack = case.image[np.clip(np.arange(z - self.context, z + self.context + 1), 0,
                                       case.image.shape[0] - 1)] if self.context else case.image[z]
            if self.frames is not None:
                hu, lab, coords = self.augment(stack, case.label[z], srng, return_coords=True)
            else:
                hu, lab = self.augment(stack, case.label[z], srng)
            if self.context:
                if self.extra is not None:  # the same random draw for every slice of the stack
                    state = srng.bit_generator.state
                    hu = np.stack([np.asarray(self.extra(c, _rng_at(state)), np.float32) for c in hu])
            else:
                if self.extra is not None:
                    hu = np.asarray(self.extra(hu, srng), np.float32)
                hu = hu[None]
            if self.frames is not None:
                from styleseg.seg.predict import position_maps

                hu = np.concatenate([hu, position_maps(self.frames[ci][z], coords[0], coords[1])])
            imgs.append(hu)
            labs.append(lab)
            anns.append(case.annotated)
        x = torch.from_numpy(np.stack(imgs))
        return x, torch.from_numpy(np.stack(labs).astype(np.int64)), torch.from_numpy(np.stack(anns))


def _rng_at(state: dict[str, Any]) -> np.random.Generator:
    g = np.random.default_rng()
    g.bit_generator.state = state
    return g


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def _dist() -> tuple[int, int, bool]:
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _state_hash(sd: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def validation_dice(model: Any, cases: list[_Case], schema: Any, windows: Sequence[str], multiple: int,
                    device: Any, rank: int = 0, world: int = 1, distributed: bool = False,
                    context: int = 0, position: bool = False) -> dict[str, float]:
    """Mean over validation cases of the 3D Dice per structure (cases that did not annotate a
    structure, or where it is absent from both reference and prediction, are skipped)."""
    import torch

    from styleseg.seg.predict import infer_slices

    nc = schema.num_classes
    counts = torch.zeros(len(cases), nc, 4, dtype=torch.float64)  # inter, pred, ref, annotated
    model.eval()
    for i in range(rank, len(cases), world):
        c = cases[i]
        pred = infer_slices(model, np.asarray(c.image, np.float32), windows, multiple, 1, device, context=context,
                            position=position)
        for v in schema.values:
            p, r = pred == v, c.label == v
            counts[i, v] = torch.tensor([(p & r).sum(), p.sum(), r.sum(), float(c.annotated[v])])
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(counts)
    out: dict[str, float] = {}
    for name, v in schema.structures:
        d = [2 * it / (ps + rs) for it, ps, rs, a in counts[:, v].tolist() if a and ps + rs > 0]
        if d:
            out[name] = float(np.mean(d))
    return out


def train_segmentation(datasets: Sequence[Path], out: Path, cfg: SegTrainConfig, resume: bool = False,
                       val_cases: Sequence[str] | None = None, extra_transform: Callable | None = None,
                       progress: bool = True, stop_after_steps: int | None = None) -> Path:
    """Train a U-Net and write a segmentation model folder at ``out`` (model.json + weights.pt of the
    best validation epoch, or the last epoch without validation), ``checkpoint.pt`` and
    ``train_log.jsonl``. ``val_cases=[]`` disables validation; ``stop_after_steps`` interrupts the
    run after that many optimiser steps (with a checkpoint), as a crash would; ``resume=True`` then
    continues it exactly. ``extra_transform(hu_crop, rng) -> hu_crop`` is the hook of intensity
    comparison arms (must be picklable for DDP spawn)."""
    import torch

    from styleseg.data.transforms import TrainAugment, TrainAugmentConfig
    from styleseg.runs import (
        append_jsonl,
        load_checkpoint,
        read_model_folder,
        save_checkpoint,
        seed_everything,
        write_model_folder,
    )
    from styleseg.seg.losses import marginal_dice_ce
    from styleseg.seg.predict import network_input
    from styleseg.seg.unet import UNet, UNetSpec

    out = Path(out)
    datasets = [Path(d) for d in datasets]
    rank, world, distributed = _dist()
    if cfg.batch_size % world:
        raise ConfigError(f"train_seg.batch_size ({cfg.batch_size}) must be divisible by the {world} processes")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    ckpt_path = out / CHECKPOINT
    if not resume and (out / "model.json").exists():
        raise InputError(out, "model folder already exists", "choose another --out, or pass --resume to continue")
    if resume and not ckpt_path.exists():
        raise InputError(ckpt_path, "nothing to resume: no checkpoint", "start without --resume")

    seed_everything(cfg.seed)
    cases, schema = _load_cases(datasets, cfg.downsample)
    is_val = patient_split([c.group for c in cases], cfg.val_fraction, cfg.seed, val_cases, [c.key for c in cases])
    train_cases = [c for c, v in zip(cases, is_val, strict=True) if not v]
    val_set = [c for c, v in zip(cases, is_val, strict=True) if v]
    if not train_cases:
        raise ConfigError("no training case left after the validation split; lower val_fraction")
    catch_all = [0] + [schema.value(n) for n in CATCH_ALL_NAMES if n in schema.names]
    organs = tuple(v for v in schema.values if v not in catch_all)
    aug = TrainAugment(TrainAugmentConfig(crop=cfg.crop, rotate_deg=cfg.rotate_deg,
                                          scale=(cfg.scale_min, cfg.scale_max), elastic_prob=cfg.elastic_prob,
                                          foreground_prob=cfg.foreground_prob), organs)
    batcher = _Batcher(train_cases, aug, cfg.windows, cfg.seed, extra_transform, cfg.context, cfg.position)
    n_pos = 2 if cfg.position else 0
    steps_per_epoch = cfg.steps_per_epoch or max(1, len(batcher.index) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch

    spec = UNetSpec(in_channels=len(cfg.windows) * (2 * cfg.context + 1) + n_pos, num_classes=schema.num_classes,
                    base_channels=cfg.base_channels, depth=cfg.depth)
    # channels-last: the layout oneDNN (CPU, incl. AMX bf16) and cuDNN convolve fastest (a step of the
    # quick preset at crop 192 in bf16 on one CPU thread: 0.45 s -> 0.36 s)
    model = UNet(spec).to(device, memory_format=torch.channels_last)
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.99, nesterov=True,
                              weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _PolyLR(total))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    chash = config_hash(cfg, extra=[str(d.resolve()) for d in datasets])
    split = {"train": [c.key for c in train_cases], "val": [c.key for c in val_set]}
    st: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": -1.0, "best_epoch": -1,
                          "best_val": {}, "bad_epochs": 0, "loss_sum": 0.0, "loss_n": 0, "epoch_time": 0.0}
    if resume:
        ck = load_checkpoint(ckpt_path, map_location=device)
        if ck["config_hash"] != chash:
            raise CheckpointMismatch(f"{ckpt_path}: the checkpoint was made with another config or other datasets; "
                              "resume with the same settings, or start a new --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        batcher.rng.bit_generator.state = ck["sampler"]
        st.update(ck["counters"])
        log.info("resuming %s at epoch %d step %d", out, st["epoch"], st["global_step"])
    net: torch.nn.Module = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    from styleseg.seg.predict import FRAME_SMOOTH_PX

    meta = {"architecture": spec.to_json(), "labels": schema.to_labels_dict(), "windows": list(cfg.windows),
            "context": cfg.context, "position": cfg.position, "downsample": cfg.downsample, "catch_all": catch_all,
            **({"position_smooth_px": FRAME_SMOOTH_PX} if cfg.position else {}),
            "config": to_dict(cfg),
            "config_hash": chash,
            "split": split, "datasets": [str(d) for d in datasets],
            "train_spacing_mm": float(np.median([c.spacing[0] for c in train_cases])),
            "orientation": "axial, canonical LPS in-plane (identity direction)"}

    def save_ckpt() -> None:
        if rank == 0:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                        "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                                        "sampler": batcher.rng.bit_generator.state, "counters": dict(st),
                                        "config_hash": chash, "config": to_dict(cfg)})
        if distributed:
            torch.distributed.barrier()

    bar = _progress(progress and rank == 0, total, st["global_step"])
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    t0 = time.perf_counter()
    try:
        while st["epoch"] < cfg.epochs:
            net.train()
            while st["step_in_epoch"] < steps_per_epoch:
                if stop_after_steps is not None and st["global_step"] >= stop_after_steps:
                    st["epoch_time"] += time.perf_counter() - t0
                    save_ckpt()
                    log.info("stopped after %d steps (checkpoint written)", st["global_step"])
                    return out
                x, y, ann = batcher.next(cfg.batch_size, rank, world)
                x, y = x.to(device), y.to(device)
                if not cfg.marginal_loss:
                    ann = torch.ones_like(ann)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logits = net(network_input(x, cfg.windows, n_pos).contiguous(memory_format=torch.channels_last))
                loss = marginal_dice_ce(logits, y, ann, catch_all, cfg.dice_weight, cfg.ce_weight)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                st["step_in_epoch"] += 1
                st["global_step"] += 1
                st["loss_sum"] += float(loss.detach())
                st["loss_n"] += 1
                if bar is not None:
                    bar[0].update(bar[1], advance=1, description=f"epoch {st['epoch'] + 1}/{cfg.epochs} "
                                  f"loss {st['loss_sum'] / st['loss_n']:.3f}")
            # ---- end of epoch
            if distributed:  # make BN buffers identical on every rank (parameters already are)
                for b in model.buffers():
                    torch.distributed.broadcast(b, 0)
            val = validation_dice(model, val_set, schema, cfg.windows, 2**spec.depth, device,
                                  rank, world, distributed, cfg.context, cfg.position) if val_set else {}
            organ_names = [schema.name(v) for v in organs]
            scores = [val[n] for n in organ_names if n in val]
            score = float(np.mean(scores)) if scores else float("nan")
            st["epoch_time"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            rec = {"epoch": st["epoch"] + 1, "step": st["global_step"], "loss": st["loss_sum"] / max(st["loss_n"], 1),
                   "lr": sched.get_last_lr()[0], "val_dice": val, "val_mean_organs": score,
                   "time_s": round(st["epoch_time"], 2)}
            improved = not val_set or (score == score and score > st["best_score"])
            if improved:
                st.update(best_score=score if val_set else -1.0, best_epoch=st["epoch"] + 1, best_val=val,
                          bad_epochs=0)
                if rank == 0:
                    write_model_folder(out, "segmentation", {**meta, "best_epoch": st["best_epoch"],
                                                             "best_val_dice": val, "complete": False},
                                       model.state_dict())
            else:
                st["bad_epochs"] += 1
            if rank == 0:
                append_jsonl(out / TRAIN_LOG, rec)
                log.info("epoch %d: loss %.4f val %s", rec["epoch"], rec["loss"],
                         {k: round(v, 3) for k, v in val.items()})
            st.update(epoch=st["epoch"] + 1, step_in_epoch=0, loss_sum=0.0, loss_n=0, epoch_time=0.0)
            save_ckpt()
            if cfg.patience and st["bad_epochs"] >= cfg.patience:
                log.info("early stopping: %d epochs without improvement", st["bad_epochs"])
                break
    finally:
        if bar is not None:
            bar[0].stop()
    # ---- finalise: mark the model folder complete; check DDP ranks agree
    final = {"epochs_run": st["epoch"], "steps": st["global_step"]}
    if distributed:
        import torch.distributed as dist

        hashes: list[Any] = [None] * world
        dist.all_gather_object(hashes, _state_hash(model.state_dict()))
        final["ddp"] = {"world_size": world, "final_weight_hash_per_rank": hashes}
        if len(set(hashes)) != 1:
            raise RuntimeError(f"DDP ranks ended with different weights: {hashes}")
    if rank == 0:
        best_meta, best_sd = read_model_folder(out, "segmentation")
        write_model_folder(out, "segmentation", {**{k: v for k, v in best_meta.items()
                                                    if k not in ("kind", "format_version")},
                                                 **final, "complete": True}, best_sd)
    if distributed:
        torch.distributed.barrier()
    return out


class _PolyLR:
    """nnU-Net's polynomial decay lr * (1 - step / total) ** 0.9 (picklable, unlike a lambda)."""

    def __init__(self, total: int):
        self.total = max(total, 1)

    def __call__(self, step: int) -> float:
        return max(1.0 - step / self.total, 0.0) ** 0.9


def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                 TimeElapsedColumn(), TimeRemainingColumn())
    p.start()
    task = p.add_task("training", total=total, completed=done)
    return p, task


def replace_config(cfg: SegTrainConfig, **changes: Any) -> SegTrainConfig:
    """``dataclasses.replace`` with config errors for unknown keys."""
    names = {f.name for f in dataclasses.fields(cfg)}
    bad = set(changes) - names
    if bad:
        raise ConfigError(f"train_seg: unknown setting(s) {sorted(bad)}")
    return dataclasses.replace(cfg, **changes)
