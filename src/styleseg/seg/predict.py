"""Segmentation inference: the whole-slice core (shared with validation) and the Predictor of a model folder.

HU slices -> (optional area downsampling, the low-resolution comparison arm) -> crop to the box around the
body (the air around it is background; about half the network's work on a chest slice) -> pad with air to a
multiple of 2**depth -> the model's input encoding (:class:`styleseg.seg.inputs.InputSpec`: windows, 2.5D context,
position channels in whole-slice coordinates) -> U-Net, two slices per call on a CPU -> unpad -> the box's logits
carried out to the slice's edge -> (bilinear upsampling of the logits back to the input grid) -> argmax. Padding
happens in HU, before windowing, so every window sees air, not zeros.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from styleseg.errors import ConfigError, InputError
from styleseg.seg.inputs import (
    AIR_HU,
    InputSpec,
    body_box,
    body_frame,
    canonical_flips,
    context_stack,
    downsample_hu,
    position_maps,
    to_canonical,
    window_channels,
)
from styleseg.seg.resample import (
    REFUSE_RATIO,
    WARN_RATIO,
    network_size,
    resample_images,
    resample_logits,
    spacing_ratio,
)
from styleseg.seg.unet import fold_batch_norm, pad_multiple, unpad
from styleseg.trainer import resolve_amp, tune_allocator

log = logging.getLogger("styleseg.seg.predict")


#: slices per network call on a CPU: at base 32 a 512 x 512 activation of 2 slices stays within glibc's largest
#: mmap threshold (:func:`styleseg.trainer.tune_allocator`); larger calls are no faster per slice (BENCHMARKS.md)
CPU_NET_BATCH = 2


@torch.no_grad()
def infer_slices(model: torch.nn.Module, hu: np.ndarray, spec: InputSpec, multiple: int,
                 device: torch.device | str = "cpu", batch_size: int = 8, dtype: str = "float32",
                 channels_last: bool = False, before: np.ndarray | None = None,
                 after: np.ndarray | None = None, size: tuple[int, int] | None = None,
                 confidence: np.ndarray | None = None, crop: bool = True,
                 net_batch: int | None = None) -> np.ndarray:
    """Labels (N, H, W) uint8 for HU slices ``hu`` (N, H, W) on the same grid, encoded as ``spec`` says.
    A 2.5D model reads ``before``/``after``, the neighbouring slices outside ``hu``
    (:func:`~styleseg.seg.inputs.context_stack`); position channels are computed in each slice's body frame,
    found on the (downsampled) whole slice as in training. ``size``: the (H, W) the slices are resampled to for
    the network (the model's training spacing, :mod:`styleseg.seg.resample`); the logits come back to the input
    grid before the argmax. ``confidence`` (an (N,) array), when given, receives each slice's mean
    winning-class probability over the pixels it labels as a structure (1 when it labels none).

    ``crop``: the network sees only the box around the body of each batch of ``batch_size`` slices
    (:func:`~styleseg.seg.inputs.body_box`, 32 px of air kept around it, its corners snapped outwards to the
    whole slice's grid of ``multiple`` px so every pooling window holds the pixels it holds in a whole-slice pass;
    the position channels keep their whole-slice coordinates), and the logits at the box's edge are carried out
    to the slice's edge, which is air; where no body is found the whole slice is used. ``net_batch``: slices per
    network call (default :data:`CPU_NET_BATCH` on a CPU, the whole batch elsewhere)."""
    device = torch.device(device)
    out = np.zeros(hu.shape, np.uint8)
    k = spec.context
    step = net_batch or (CPU_NET_BATCH if device.type == "cpu" else batch_size)
    for i in range(0, hu.shape[0], batch_size):
        j = min(i + batch_size, hu.shape[0])
        xs = context_stack(hu, i, j, k, before, after) if k else hu[i:j, None]
        x = torch.from_numpy(np.ascontiguousarray(xs, np.float32)).to(device)
        h, w = x.shape[-2:]
        if size is not None:
            x = resample_images(x, size)
        x = downsample_hu(x, spec.downsample)
        centre = x[:, k].cpu().numpy()
        frames = body_frame(centre, spec.position_smooth_px) if spec.position else None
        x, pads = pad_multiple(x, multiple, AIR_HU)
        hp, wp = x.shape[-2:]
        box = body_box(centre) if crop else None
        if box is None:
            y0, y1, x0, x1 = 0, hp, 0, wp
        else:  # on the padded grid, snapped to multiples of 2**depth: the pooling sees what the whole pass sees
            y0, x0 = (box[0] + pads[0]) // multiple * multiple, (box[2] + pads[2]) // multiple * multiple
            y1 = min(hp, -(-(box[1] + pads[0]) // multiple) * multiple)
            x1 = min(wp, -(-(box[3] + pads[2]) // multiple) * multiple)
        x = window_channels(x[..., y0:y1, x0:x1], spec.windows)
        if frames is not None:
            yy = (np.arange(y0, y1) - pads[0])[:, None]
            xx = (np.arange(x0, x1) - pads[2])[None, :]
            pos = np.stack([position_maps(f, yy, xx) for f in frames])
            x = torch.cat([x, torch.from_numpy(pos).to(x.device)], dim=1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        parts = []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            for a in range(0, x.shape[0], step):
                parts.append(model(x[a:a + step]).float())
        logits = torch.cat(parts).contiguous()
        if (y1 - y0, x1 - x0) != (hp, wp):
            logits = F.pad(logits, (x0, wp - x1, y0, hp - y1), mode="replicate")
        logits = unpad(logits, pads)
        if tuple(logits.shape[-2:]) != (h, w):
            logits = resample_logits(logits, (h, w))
        # max(1).indices: the same first-maximum label as argmax(1), whose reduction over the channel dim of an
        # NCHW tensor runs ~15x slower on a CPU (0.4 s for 8 slices of 512 x 512, as long as the network's call)
        out[i:j] = logits.max(1).indices.to(torch.uint8).cpu().numpy()
        if confidence is not None:
            top = torch.softmax(logits, 1).amax(1)  # (n, h, w)
            fg = torch.from_numpy(out[i:j] > 0).to(top.device)
            confidence[i:j] = torch.where(fg.flatten(1).any(1), (top * fg).flatten(1).sum(1) /
                                          fg.flatten(1).sum(1).clamp_min(1), torch.ones(j - i)).cpu().numpy()
    return out


class Predictor:
    """Apply a segmentation model folder (``styleseg train-seg``) to HU slices or volumes.

    ``dtype="bfloat16"`` runs under CPU/GPU autocast, ``"auto"`` only where the device computes bf16 natively
    (:func:`~styleseg.trainer.fast_bf16`, else float32); ``channels_last`` uses NHWC memory layout (often
    faster with oneDNN). Whole-slice inference: the U-Net is fully convolutional, slices are padded
    with air to a multiple of 2**depth. A model folder whose training has not finished (``complete`` false
    in model.json: still running, or killed) is refused unless ``allow_incomplete`` asks for its last
    best-epoch weights. ``resample`` (default): slices more than
    :data:`~styleseg.seg.resample.RESAMPLE_TOLERANCE` off the model's training spacing are resampled to it for
    the network and their logits brought back (:mod:`styleseg.seg.resample`); False keeps the native grid.
    ``crop`` (default): the network sees the box around the body only (:func:`infer_slices`); False: the whole
    slice. ``batch_size`` slices share one box; on a CPU the network runs :data:`CPU_NET_BATCH` of them per call,
    and building a Predictor keeps freed memory in the heap (:func:`~styleseg.trainer.tune_allocator`).
    """

    def __init__(self, model_folder: str | Path, device: str = "auto", batch_size: int = 8,
                 dtype: str = "float32", channels_last: bool = False, force_spacing: bool = False,
                 allow_incomplete: bool = False, resample: bool = True, crop: bool = True):
        from styleseg.runs import choose_device, read_model_folder
        from styleseg.seg.unet import UNet, UNetSpec

        if dtype not in ("float32", "bfloat16", "auto"):
            raise ConfigError(f"predictor dtype {dtype!r}: choose float32, bfloat16 or auto")
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.folder = Path(model_folder)
        self.meta, sd = read_model_folder(self.folder, "segmentation")
        if self.meta.get("complete") is False and not allow_incomplete:
            raise InputError(self.folder / "model.json", "training of this model has not finished (it is still "
                             "running, or was interrupted)", "wait for it, resume it with `styleseg train-seg "
                             "--resume`, or pass --allow-incomplete to use its best epoch so far")
        try:
            self.spec = UNetSpec.from_json(self.meta["architecture"])
            self.model = UNet(self.spec)
            self.model.load_state_dict(sd)
        except (KeyError, TypeError, RuntimeError) as e:
            raise InputError(self.folder / "weights.pt", f"weights do not match the architecture in model.json "
                             f"({type(e).__name__}: {str(e).splitlines()[0]})", "retrain or restore the folder") from e
        self.inputs = InputSpec.from_model_json(self.meta)
        self.device = choose_device(device)
        amp = resolve_amp({"auto": "auto", "bfloat16": "bf16"}.get(dtype, "none"), self.device, "predictor dtype")
        dtype = "bfloat16" if amp == "bf16" else "float32"
        self.model = fold_batch_norm(self.model).to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.dtype = dtype
        self.force_spacing = force_spacing
        self.labels: dict[str, int] = dict(self.meta.get("labels", {}))
        self.train_spacing = self.meta.get("train_spacing_mm")
        self.resample = resample
        self.crop = crop
        if self.device.type == "cpu":
            tune_allocator()

    @property
    def context(self) -> int:
        return self.inputs.context

    def network_size(self, shape_hw: Sequence[int], spacing: Sequence[float] | None) -> tuple[int, int] | None:
        """The (H, W) slices of ``shape_hw`` at ``spacing`` (x, y mm) are resampled to for the network; None: native."""
        if not self.resample or spacing is None:
            return None
        return network_size(shape_hw, spacing, self.train_spacing)

    def predict_array(self, hu: np.ndarray, before: np.ndarray | None = None,
                      after: np.ndarray | None = None, spacing: Sequence[float] | None = None,
                      confidence: np.ndarray | None = None) -> np.ndarray:
        """HU slices (N, H, W) in canonical orientation, consecutive slices of one volume -> uint8 labels
        (N, H, W). A 2.5D model (``context`` > 0) also reads ``before``/``after``, the neighbouring slices
        outside ``hu`` (none: ``hu`` starts/ends the volume). ``spacing`` (x, y mm): the slices' pixel spacing,
        for resampling to the training spacing (None: used as they are); ``confidence``: see :func:`infer_slices`."""
        hu = np.asarray(hu)
        if hu.ndim == 2:
            hu = hu[None]
        return infer_slices(self.model, hu, self.inputs, 2**self.spec.depth, self.device, self.batch_size,
                            self.dtype, self.channels_last, before, after,
                            self.network_size(hu.shape[-2:], spacing), confidence, self.crop)

    def predict_chunks(self, chunks: Iterable[np.ndarray],
                       spacing: Sequence[float] | None = None) -> Iterator[np.ndarray]:
        """Stream a volume: an iterable of consecutive HU chunks (n_i, H, W) -> yields their labels, chunk by
        chunk. A 2.5D model needs ``context`` slices after each chunk, so a chunk is answered once enough of
        the following ones have arrived; memory stays at a few chunks."""
        from collections import deque

        k = self.context
        if not k:
            for c in chunks:
                yield self.predict_array(c, spacing=spacing)
            return
        tail: np.ndarray | None = None  # the last k slices before the chunk being answered
        queue: deque[np.ndarray] = deque()

        def answer() -> np.ndarray:
            nonlocal tail
            cur = queue.popleft()
            after = np.concatenate(list(queue))[:k] if queue else None
            lab = self.predict_array(cur, tail, after, spacing)
            tail = np.concatenate([a for a in (tail, cur) if a is not None])[-k:]
            return lab

        for c in chunks:
            queue.append(np.asarray(c))
            while len(queue) > 1 and sum(len(q) for q in list(queue)[1:]) >= k:
                yield answer()
        while queue:
            yield answer()

    def check_geometry(self, spacing: Sequence[float], direction: Sequence[float], path: Any = None,
                       ) -> tuple[bool, bool]:
        """Refuse non-axial input and check the pixel spacing against the training spacing; returns the
        canonical flips. Resampling (the default): warn beyond ``WARN_RATIO`` (2x) off, refuse beyond
        ``REFUSE_RATIO`` (4x: not a native-resolution CT; the texture is gone) unless ``force_spacing``. Without
        resampling: warn beyond 1.25x, refuse beyond 2x unless ``force_spacing``."""
        flips = canonical_flips(direction, path)
        if self.train_spacing:
            ratio = spacing_ratio(spacing, float(self.train_spacing))
            msg = (f"in-plane spacing {np.round(spacing[:2], 3).tolist()} mm is {ratio:.2f}x off the model's "
                   f"training spacing {self.train_spacing:.3f} mm")
            warn, refuse = (WARN_RATIO, REFUSE_RATIO) if self.resample else (1.25, 2.0)
            if ratio > refuse and not self.force_spacing:
                raise InputError(path, msg, "resample the input to the training spacing, or pass --force-spacing")
            if ratio > warn:
                log.warning("%s: %s; accuracy may suffer", path, msg)
        return flips

    def predict_volume(self, vol: Any) -> Any:
        """A HU Volume -> a uint8 label Volume on the same grid."""
        flips = self.check_geometry(vol.spacing, vol.direction, vol.tags.get("source"))
        hu = to_canonical(np.asarray(vol.array), flips)
        lab = to_canonical(self.predict_array(hu, spacing=vol.spacing[:2]), flips)
        return vol.with_array(lab)
