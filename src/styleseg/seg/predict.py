"""Segmentation inference: whole-slice core (shared with validation) and the streaming Predictor.

HU slices -> (optional area downsampling, the low-resolution comparison arm) -> pad with air to a
multiple of 2**depth -> CT windows as channels -> U-Net -> unpad -> (bilinear upsampling of the
logits back to the input grid) -> argmax. Padding happens in HU, before windowing, so every window
sees air, not zeros.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from styleseg.data.slices import WINDOWS
from styleseg.errors import ConfigError, InputError
from styleseg.seg.unet import pad_multiple, unpad

log = logging.getLogger("styleseg.seg.predict")

AIR_HU = -1024.0


def window_channels(hu: torch.Tensor, windows: Sequence[str]) -> torch.Tensor:
    """(B, C, H, W) HU -> (B, len(windows) * C, H, W) in [0, 1] (the same mapping as slices.window), window-major:
    C > 1 are the slices of a 2.5D stack."""
    chans = []
    for name in windows:
        centre, width = WINDOWS[name]
        lo = centre - width / 2.0
        chans.append(((hu - lo) / width).clamp_(0.0, 1.0))
    return torch.cat(chans, dim=1)


def network_input(x: torch.Tensor, windows: Sequence[str], n_position: int = 0) -> torch.Tensor:
    """The U-Net's input from a batch (B, C, H, W) whose first C - ``n_position`` channels are HU (one slice or
    a 2.5D stack) and whose last ``n_position`` are position maps (:func:`position_maps`, passed unchanged)."""
    if not n_position:
        return window_channels(x, windows)
    return torch.cat([window_channels(x[:, :-n_position], windows), x[:, -n_position:]], dim=1)


FRAME_SMOOTH_PX = 2.0  # Gaussian low-pass before the body threshold of body_frame (model.json "position_smooth_px")


def body_frame(hu: np.ndarray, smooth_px: float = FRAME_SMOOTH_PX) -> np.ndarray:
    """(N, 4) float: for each HU slice of ``hu`` (N, H, W) the centre and half-extent (cy, cx, hy, hx), in
    pixels, of the bounding box of its body (:func:`styleseg.labels.derive_body`, slice by slice, on the slice
    low-passed by a Gaussian of ``smooth_px``); the whole slice where no body is found. The frame of the
    position channels.

    The low-pass keeps noise from breaking the body: on low-dose and generated slices, fat at -100 HU with
    ~100 HU of noise falls below the -400 HU threshold often enough that the opening inside ``derive_body``
    split the torso, and the frame shrank to a fragment (a quarter of the demo's augmented slices, one style
    entirely; none with 1-2 px of low-pass). Models trained before it (no ``position_smooth_px`` in their
    model.json) are given frames without it, as they were trained."""
    from scipy import ndimage as ndi

    from styleseg.labels import derive_body

    hu = np.asarray(hu)
    if hu.ndim == 2:
        hu = hu[None]
    out = np.empty((hu.shape[0], 4))
    for i, s in enumerate(hu):
        if smooth_px > 0:
            s = ndi.gaussian_filter(np.asarray(s, np.float32), smooth_px)
        ys, xs = np.nonzero(derive_body(s))
        if ys.size == 0:
            h, w = s.shape
            out[i] = ((h - 1) / 2, (w - 1) / 2, h / 2, w / 2)
        else:
            out[i] = ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2,
                      max((ys.max() - ys.min()) / 2, 1.0), max((xs.max() - xs.min()) / 2, 1.0))
    return out


def position_maps(frame: Sequence[float], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(2, ...) float32 position channels for pixels at rows ``y`` and columns ``x`` (broadcastable arrays,
    full-slice pixel coordinates): ((x - cx) / hx, (y - cy) / hy) in the slice's body ``frame`` (cy, cx, hy, hx),
    i.e. -1..1 from the patient's right to left edge and front to back. It tells a crop which side of the body
    it shows (a crop of one lung does not), independent of field of view, pixel spacing and patient size."""
    cy, cx, hy, hx = (float(v) for v in frame)
    y, x = np.broadcast_arrays(np.asarray(y, np.float64), np.asarray(x, np.float64))
    return np.stack([(x - cx) / hx, (y - cy) / hy]).astype(np.float32)


def downsample_hu(hu: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average (B, 1, H, W) by ``factor`` (output size ceil(H / factor))."""
    if factor <= 1:
        return hu
    h, w = hu.shape[-2:]
    return F.interpolate(hu, size=(math.ceil(h / factor), math.ceil(w / factor)), mode="area")


def downsample_label(lab: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour downsampling of (B, 1, H, W) labels (same output size as downsample_hu)."""
    if factor <= 1:
        return lab
    h, w = lab.shape[-2:]
    return F.interpolate(lab.float(), size=(math.ceil(h / factor), math.ceil(w / factor)),
                         mode="nearest").to(lab.dtype)


def context_stack(hu: np.ndarray, start: int, stop: int, context: int, before: np.ndarray | None = None,
                  after: np.ndarray | None = None) -> np.ndarray:
    """(stop - start, 2 * context + 1, H, W): slices ``start:stop`` of ``hu`` (N, H, W) each with its
    ``context`` neighbours per side, taken from ``before``/``after`` (the slices just outside ``hu``, when
    ``hu`` is a chunk of a longer volume) and repeating the edge slice at the ends of the volume."""
    nb = 0 if before is None else len(before)
    full = hu if not nb and (after is None or not len(after)) else np.concatenate(
        [a for a in (before, hu, after) if a is not None and len(a)])
    zs = np.arange(start, stop)[:, None] + nb + np.arange(-context, context + 1)[None]
    return full[np.clip(zs, 0, len(full) - 1)]


@torch.no_grad()
def infer_slices(model: torch.nn.Module, hu: np.ndarray, windows: Sequence[str], multiple: int,
                 downsample: int = 1, device: torch.device | str = "cpu", batch_size: int = 8,
                 dtype: str = "float32", channels_last: bool = False, context: int = 0,
                 before: np.ndarray | None = None, after: np.ndarray | None = None,
                 position: bool = False, position_smooth_px: float = FRAME_SMOOTH_PX) -> np.ndarray:
    """Labels (N, H, W) uint8 for HU slices ``hu`` (N, H, W) on the same grid. ``context`` > 0: 2.5D
    models, see :func:`context_stack` (``before``/``after``: neighbouring slices outside ``hu``).
    ``position``: the model also reads two position channels (:func:`position_maps`) in each slice's body
    frame, found on the (downsampled) slice as in training (``position_smooth_px``: see :func:`body_frame`)."""
    device = torch.device(device)
    out = np.zeros(hu.shape, np.uint8)
    autocast = dtype == "bfloat16"
    for i in range(0, hu.shape[0], batch_size):
        j = min(i + batch_size, hu.shape[0])
        xs = context_stack(hu, i, j, context, before, after) if context else hu[i:j, None]
        x = torch.from_numpy(np.ascontiguousarray(xs, np.float32)).to(device)
        h, w = x.shape[-2:]
        x = downsample_hu(x, downsample)
        frames = body_frame(x[:, context].cpu().numpy(), position_smooth_px) if position else None
        x, pads = pad_multiple(x, multiple, AIR_HU)
        x = window_channels(x, windows)
        if frames is not None:
            yy = (np.arange(x.shape[-2]) - pads[0])[:, None]
            xx = (np.arange(x.shape[-1]) - pads[2])[None, :]
            pos = np.stack([position_maps(f, yy, xx) for f in frames])
            x = torch.cat([x, torch.from_numpy(pos).to(x.device)], dim=1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        logits = unpad(logits.float(), pads)
        if downsample > 1:
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        out[i:i + batch_size] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return out


# ------------------------------------------------------------------------------------------------
# Predictor: a model folder -> labels; streaming, resumable, shardable collections
# ------------------------------------------------------------------------------------------------
class Predictor:
    """Apply a segmentation model folder (``styleseg train-seg``) to HU slices or volumes.

    ``dtype="bfloat16"`` runs under CPU/GPU autocast; ``channels_last`` uses NHWC memory layout (often
    faster with oneDNN). Whole-slice inference: the U-Net is fully convolutional, slices are padded
    with air to a multiple of 2**depth.
    """

    def __init__(self, model_folder: str | Path, device: str = "auto", batch_size: int = 8,
                 dtype: str = "float32", channels_last: bool = False, force_spacing: bool = False):
        from styleseg.runs import choose_device, read_model_folder
        from styleseg.seg.unet import UNet, UNetSpec

        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"predictor dtype {dtype!r}: choose float32 or bfloat16")
        self.folder = Path(model_folder)
        self.meta, sd = read_model_folder(self.folder, "segmentation")
        try:
            self.spec = UNetSpec.from_json(self.meta["architecture"])
            self.model = UNet(self.spec)
            self.model.load_state_dict(sd)
        except (KeyError, TypeError, RuntimeError) as e:
            raise InputError(self.folder / "weights.pt", f"weights do not match the architecture in model.json "
                             f"({type(e).__name__}: {str(e).splitlines()[0]})", "retrain or restore the folder") from e
        self.device = choose_device(device)
        self.model.to(self.device).eval()
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.windows = tuple(self.meta.get("windows", ("soft_tissue",)))
        self.context = int(self.meta.get("context", 0))
        self.position = bool(self.meta.get("position", False))
        self.position_smooth_px = float(self.meta.get("position_smooth_px", 0.0))  # older models: none
        self.downsample = int(self.meta.get("downsample", 1))
        self.batch_size = batch_size
        self.dtype = dtype
        self.force_spacing = force_spacing
        self.labels: dict[str, int] = dict(self.meta.get("labels", {}))
        self.train_spacing = self.meta.get("train_spacing_mm")

    def predict_array(self, hu: np.ndarray, before: np.ndarray | None = None,
                      after: np.ndarray | None = None) -> np.ndarray:
        """HU slices (N, H, W) in canonical orientation, consecutive slices of one volume -> uint8 labels
        (N, H, W). A 2.5D model (``context`` > 0) also reads ``before``/``after``, the neighbouring slices
        outside ``hu`` (none: ``hu`` starts/ends the volume)."""
        hu = np.asarray(hu)
        if hu.ndim == 2:
            hu = hu[None]
        return infer_slices(self.model, hu, self.windows, 2**self.spec.depth, self.downsample, self.device,
                            self.batch_size, self.dtype, self.channels_last, self.context, before, after,
                            self.position, self.position_smooth_px)

    def predict_chunks(self, chunks: Any) -> Any:
        """Stream a volume: an iterable of consecutive HU chunks (n_i, H, W) -> yields their labels, chunk by
        chunk. A 2.5D model needs ``context`` slices after each chunk, so a chunk is answered once enough of
        the following ones have arrived; memory stays at a few chunks."""
        from collections import deque

        k = self.context
        if not k:
            for c in chunks:
                yield self.predict_array(c)
            return
        tail: np.ndarray | None = None  # the last k slices before the chunk being answered
        queue: deque[np.ndarray] = deque()

        def answer() -> np.ndarray:
            nonlocal tail
            cur = queue.popleft()
            after = np.concatenate(list(queue))[:k] if queue else None
            lab = self.predict_array(cur, tail, after)
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
        """Refuse non-axial input; warn for spacing > 1.25x off the training spacing and refuse > 2x
        (unless ``force_spacing``). Returns the canonical flips."""
        from styleseg.seg.train import canonical_flips

        flips = canonical_flips(direction, path)
        if self.train_spacing:
            r = float(np.mean(spacing[:2])) / float(self.train_spacing)
            ratio = max(r, 1 / r)
            msg = (f"in-plane spacing {np.round(spacing[:2], 3).tolist()} mm is {ratio:.2f}x off the model's "
                   f"training spacing {self.train_spacing:.3f} mm")
            if ratio > 2 and not self.force_spacing:
                raise InputError(path, msg, "resample the input to the training spacing, or pass --force-spacing")
            if ratio > 1.25:
                log.warning("%s: %s; accuracy may suffer", path, msg)
        return flips

    def predict_volume(self, vol: Any) -> Any:
        """A HU Volume -> a uint8 label Volume on the same grid."""
        flips = self.check_geometry(vol.spacing, vol.direction, vol.tags.get("source"))
        from styleseg.seg.train import to_canonical

        hu = to_canonical(np.asarray(vol.array), flips)
        lab = to_canonical(self.predict_array(hu), flips)
        return vol.with_array(lab)


@dataclass
class SegmentReport:
    """What :func:`segment` did: written, skipped (already done, ``--continue``) and failed cases."""

    out: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    slices: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "slices": self.slices, "seconds": round(self.seconds, 2)}


def discover_inputs(inputs: Sequence[Path]) -> list[tuple[str, Path, str]]:
    """(case id, path, kind) for NIfTI files, DICOM series folders and dataset folders; kind is
    "nifti" or "dicom". Sorted by case id; duplicate ids raise InputError."""
    from styleseg.io.volume import is_nifti

    found: list[tuple[str, Path, str]] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise InputError(p, "input does not exist", "check the path")
        if p.is_file() and is_nifti(p):
            name = p.name[: -len(".nii.gz")] if p.name.lower().endswith(".nii.gz") else p.stem
            found.append((name[:-5] if name.endswith("_0000") else name, p, "nifti"))
        elif p.is_dir() and (p / "dataset.json").exists():
            from styleseg.io.dataset import Dataset

            ds = Dataset(p)
            found += [(c.case_id, ds.image_path(c.case_id), "nifti") for c in ds.cases]
        elif p.is_dir():
            found.append((p.name, p, "dicom"))
        else:
            raise InputError(p, "not a NIfTI file, DICOM series folder or dataset folder",
                             "pass .nii/.nii.gz files, a folder of DICOM slices, or a dataset folder")
    found.sort(key=lambda t: t[0])
    ids = [f[0] for f in found]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(None, f"several inputs map to the same case id(s) {dup}", "rename the inputs")
    return found


def segment(inputs: Sequence[Path], model: Path, out: Path, continue_: bool = False, part_id: int = 0,
            num_parts: int = 1, dicom_seg: bool = False, device: str = "auto", batch_size: int = 8,
            dtype: str = "float32", channels_last: bool = False, force_spacing: bool = False,
            chunk_slices: int = 32, progress: bool = False) -> SegmentReport:
    """Segment every case of ``inputs`` into ``out/<case>.nii.gz`` (uint8 labels on the input grid).

    Cases are sorted by id and this call does those with ``index % num_parts == part_id``;
    ``continue_`` skips cases whose output exists (outputs are atomic, so an existing one is
    complete). A bad case is logged and recorded in the report; the others still run. NIfTI input
    is streamed ``chunk_slices`` slices at a time and the output is written as it is produced.
    """
    from styleseg.io.atomic import write_json

    if not 0 <= part_id < num_parts:
        raise ConfigError(f"--part-id {part_id} must be in [0, --num-parts {num_parts})")
    pred = Predictor(model, device=device, batch_size=batch_size, dtype=dtype, channels_last=channels_last,
                     force_spacing=force_spacing)
    cases = discover_inputs(inputs)
    mine = [c for i, c in enumerate(cases) if i % num_parts == part_id]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = SegmentReport(out)
    t0 = time.perf_counter()
    for cid, path, kind in mine:
        dest = out / f"{cid}.nii.gz"
        if continue_ and dest.exists():
            rep.skipped.append(cid)
            continue
        try:
            if kind == "nifti":
                if dicom_seg:
                    log.warning("%s: --dicom-seg needs DICOM input (the SEG references its slices); "
                                "writing NIfTI only", cid)
                rep.slices += segment_nifti_streaming(pred, path, dest, chunk_slices)
            else:
                rep.slices += _segment_dicom(pred, path, dest, chunk_slices, dicom_seg)
            rep.done.append(cid)
            log.debug("segmented %s -> %s", cid, dest)
        except (InputError, ValueError, OSError, EOFError, RuntimeError) as e:
            rep.failed[cid] = str(e)
            log.error("skipped %s: %s", cid, e)
    rep.seconds = time.perf_counter() - t0
    name = "segment_report.json" if num_parts == 1 else f"segment_report.part{part_id}.json"
    write_json(out / name, rep.to_json())
    return rep


def _segment_dicom(pred: Predictor, folder: Path, dest: Path, chunk_slices: int = 32,
                   dicom_seg: bool = False) -> int:
    """Segment one DICOM CT series folder, reading ``chunk_slices`` files at a time (int16 HU chunks;
    the uint8 labels are collected, 1 byte per voxel). With ``dicom_seg`` also writes
    ``<dest stem>.dcm``, a DICOM SEG referencing the source slices."""
    from styleseg.io.dicom import read_ct_series, scan_dicom, slice_geometry
    from styleseg.io.volume import Volume, write_nifti
    from styleseg.seg.train import to_canonical

    series = scan_dicom([folder]).ct_series()
    if len(series) != 1:
        raise InputError(folder, f"holds {len(series)} CT series; expected exactly one",
                         "pass one folder per series")
    headers, geom = slice_geometry(next(iter(series.values())))
    flips = pred.check_geometry(geom["spacing"], geom["direction"], folder)
    first = headers[0].ds
    lab = np.zeros((len(headers), int(first.Rows), int(first.Columns)), np.uint8)
    chunks = (to_canonical(read_ct_series(headers[z0:z0 + chunk_slices]).array, flips)
              for z0 in range(0, len(headers), chunk_slices))
    z0 = 0
    for chunk_lab in pred.predict_chunks(chunks):
        lab[z0:z0 + chunk_lab.shape[0]] = to_canonical(chunk_lab, flips)
        z0 += chunk_lab.shape[0]
    vol = Volume(lab, geom["spacing"], geom["origin"], geom["direction"])
    if dicom_seg:  # before the NIfTI, whose existence is what --continue trusts
        from styleseg.io.rtstruct import write_seg
        from styleseg.labels import LabelSchema

        write_seg(vol, LabelSchema.from_labels_dict(pred.labels), [str(h.path) for h in headers],
                  dest.with_name(dest.name.replace(".nii.gz", ".dcm")))
    write_nifti(vol, dest, np.uint8)
    return len(headers)


def _nifti_header(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputError(path, f"cannot read NIfTI header ({type(e).__name__}: {e})",
                         "the file is empty, truncated or not NIfTI; re-export it") from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, "not a NIfTI-1/2 image")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(path, f"image shape {img.shape} is not a 3D volume", "pass a single 3D CT volume")
    return img, shape


def segment_nifti_streaming(pred: Predictor, path: Path, dest: Path, chunk_slices: int = 32) -> int:
    """Segment a NIfTI CT file slice-chunk by slice-chunk, with bounded memory.

    The voxel data of a NIfTI file is stored x fastest, then y, then z, so a (z, y, x) chunk of
    slices is a contiguous run of bytes: it is read from the (gzip) stream, segmented, and its labels
    are appended to the output stream in the same order. Geometry (qform/sform) is copied from the
    input header, so the output lies exactly on the input grid. Nothing appears at ``dest`` unless
    the whole volume was written.
    """
    import gzip
    import io

    import nibabel as nib
    import SimpleITK as sitk

    from styleseg.io.atomic import atomic_path
    from styleseg.seg.train import to_canonical

    img, (nx, ny, nz) = _nifti_header(path)
    hdr = img.header
    try:
        r = sitk.ImageFileReader()
        r.SetFileName(str(path))
        r.ReadImageInformation()
        direction = r.GetDirection()
        if len(direction) == 4:
            direction = (direction[0], direction[1], 0.0, direction[2], direction[3], 0.0, 0.0, 0.0, 1.0)
        spacing = r.GetSpacing()
    except RuntimeError as e:
        raise InputError(path, f"cannot read the image geometry: {str(e).strip().splitlines()[-1]}") from e
    flips = pred.check_geometry(spacing, direction, path)
    dt = hdr.get_data_dtype()
    slope, inter = hdr.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    offset = int(img.dataobj.offset)  # the header field may be 0 for single files (then 352)
    per_slice = nx * ny * dt.itemsize

    out_hdr = nib.Nifti1Header()
    out_hdr.set_data_shape((nx, ny, nz))
    out_hdr.set_data_dtype(np.uint8)
    out_hdr.set_xyzt_units(*hdr.get_xyzt_units())
    aff_q, code_q = hdr.get_qform(coded=True)
    aff_s, code_s = hdr.get_sform(coded=True)
    if aff_q is not None:
        out_hdr.set_qform(aff_q, int(code_q))
    if aff_s is not None:
        out_hdr.set_sform(aff_s, int(code_s))
    out_hdr.set_zooms(hdr.get_zooms()[:3])
    out_hdr["vox_offset"] = 352
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as fin, atomic_path(dest) as tmp:
        with gzip.open(tmp, "wb", compresslevel=1) as fout:
            head = io.BytesIO()
            out_hdr.write_to(head)  # 348-byte header + 4-byte extension flag
            fout.write(head.getvalue().ljust(352, b"\x00"))
            fin.seek(offset)

            def chunks():
                for z0 in range(0, nz, chunk_slices):
                    n = min(chunk_slices, nz - z0)
                    buf = fin.read(per_slice * n)
                    if len(buf) != per_slice * n:
                        raise InputError(path, f"file is truncated: slice data ends at slice "
                                         f"{z0 + len(buf) // per_slice} of {nz}", "re-export or re-download the file")
                    hu = np.frombuffer(buf, dt).reshape(n, ny, nx).astype(np.float32)
                    if slope != 1.0 or inter != 0.0:
                        hu = hu * slope + inter
                    yield to_canonical(hu, flips)

            for lab in pred.predict_chunks(chunks()):
                fout.write(np.ascontiguousarray(to_canonical(lab, flips), np.uint8).tobytes())
    return nz
