"""The training skeleton the U-Net and the style generators share: checkpoints, progress, log, rank 0.

:class:`TrainingRun` holds the bookkeeping of one training run in its folder, so both loops (``seg.train``
and ``style.train``) fill in only their step:

- **checkpoints** (``checkpoint.pt``): the full state of the caller plus the run's config hash, written
  atomically by rank 0 (house style 5). One mismatch policy for every loop: resuming from a checkpoint
  written under another config hash raises :class:`~styleseg.errors.CheckpointMismatch`; the caller (the
  pipeline, or the user at the CLI) decides to start over, nothing silently throws work away;
- **log** (``train_log.jsonl``): one JSON line per record, written by rank 0 only;
- **progress**: a rich progress bar with elapsed time and ETA on rank 0 (house style 7).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from styleseg.errors import CheckpointMismatch
from styleseg.runs import append_jsonl, load_checkpoint, save_checkpoint

log = logging.getLogger("styleseg.trainer")

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.jsonl"


class Progress:
    """A progress bar of ``total`` steps (a no-op when disabled)."""

    def __init__(self, enabled: bool, description: str, total: int, done: int):
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                     TimeRemainingColumn())
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, completed=done)

    def advance(self, description: str | None = None) -> None:
        if self._bar is not None:
            kw = {} if description is None else {"description": description}
            self._bar.update(self._task, advance=1, **kw)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class TrainingRun:
    """Checkpoint, log and progress of one training run in ``folder`` (see the module docstring).

    ``config_hash`` identifies what is being trained (config and inputs); ``rank`` 0 writes files, other
    DDP ranks only read; ``barrier`` (e.g. ``torch.distributed.barrier``) is called after each checkpoint so
    no rank runs ahead of a checkpoint being written."""

    def __init__(self, folder: str | Path, config_hash: str, *, rank: int = 0, barrier: Any = None,
                 progress: bool = True):
        self.folder = Path(folder)
        self.config_hash = config_hash
        self.rank = rank
        self.barrier = barrier
        self.show_progress = progress and rank == 0

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT

    @property
    def log_path(self) -> Path:
        return self.folder / TRAIN_LOG

    def load(self, resume: bool, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The checkpoint to continue from, or None (no resume asked, or no checkpoint there).

        Raises CheckpointMismatch when the checkpoint was written under another config hash."""
        if not resume or not self.checkpoint_path.exists():
            return None
        state = load_checkpoint(self.checkpoint_path, map_location=map_location)
        if state.get("config_hash") != self.config_hash:
            raise CheckpointMismatch(f"{self.checkpoint_path}: the checkpoint was made with another config or other "
                                     "inputs; resume with the same settings, or start without resuming in a new "
                                     "output folder")
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write the full state (plus the config hash) atomically on rank 0, then meet the other ranks."""
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.checkpoint_path, {**state, "config_hash": self.config_hash})
        if self.barrier is not None:
            self.barrier()

    def log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.log_path, record)

    def fresh_log(self) -> None:
        """Start the log over (a run from step 0 must not inherit the lines of an abandoned one)."""
        if self.rank == 0:
            self.log_path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int, done: int = 0) -> Iterator[Progress]:
        bar = Progress(self.show_progress, description, total, done)
        try:
            yield bar
        finally:
            bar.stop()


class PolyLR:
    """nnU-Net's polynomial decay lr * (1 - step / total) ** 0.9 (picklable, unlike a lambda). With ``hold`` > 0
    the first ``hold`` share of the steps run at the full rate and the decay spans the rest, from 1 at step
    ``hold * total`` to 0 at ``total`` (a warmup-free "stable, then decay" schedule)."""

    def __init__(self, total: int, hold: float = 0.0):
        if not 0.0 <= hold < 1.0:
            raise ValueError(f"PolyLR: hold must be in [0, 1), got {hold}")
        self.total = max(total, 1)
        self.start = hold * self.total

    def __call__(self, step: int) -> float:
        if step <= self.start:
            return 1.0
        return max(1.0 - (step - self.start) / (self.total - self.start), 0.0) ** 0.9


def fast_bf16(device: Any) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively: a CUDA GPU that supports it, an x86 CPU with
    AVX512-BF16 or AMX (Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later), or another CPU whose oneDNN
    has a bf16 path. oneDNN also runs bf16 on x86 CPUs without those instructions (AVX-512 without BF16, e.g. Ice
    Lake: its "bf16 supported" says yes there; AVX2, e.g. Zen 3), by emulation: a U-Net training step is then
    3.7x (Ice Lake) to 11x (Zen 3) slower than in float32 (BENCHMARKS.md)."""
    import platform

    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
        return x86_native_bf16()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def x86_native_bf16() -> bool:
    """Whether this x86 CPU has bf16 instructions (AVX512-BF16 or AMX tiles), as torch's CPU feature detection
    reports it; where that is missing, the ``avx512_bf16``/``amx_bf16`` flags of /proc/cpuinfo."""
    import torch

    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(p) for p in probes):
        try:
            return any(bool(p()) for p in probes)  # type: ignore[misc]
        except RuntimeError:
            pass
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


#: glibc's mallopt parameters and the values :func:`tune_allocator` sets (what the MALLOC_*_ variables would)
_MALLOPT = {"MALLOC_MMAP_THRESHOLD_": (-3, 32 << 20), "MALLOC_TRIM_THRESHOLD_": (-1, 1 << 30),
            "MALLOC_TOP_PAD_": (-2, 256 << 20)}
_allocator_tuned: list[bool] = []


def tune_allocator() -> bool:
    """Keep freed CPU tensor memory in the process heap instead of handing it back to the kernel (glibc only;
    once per process; returns whether it changed anything).

    glibc serves allocations above its mmap threshold (dynamic, at most 32 MiB) with fresh ``mmap`` pages and
    unmaps them on free, so every op of a U-Net with activations of that size page-faults and zero-fills its
    output anew: at the predictor's old network batch of 8 (base 32, 512 x 512) that was ~940k page faults and a
    third of the run in the kernel (BENCHMARKS.md, session 15). This sets the threshold to its 32 MiB maximum and
    raises the trim threshold and top pad, as ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824
    MALLOC_TOP_PAD_=268435456`` would at start-up. A variable the user has set is left to them; on a non-glibc
    platform this does nothing."""
    if _allocator_tuned:
        return _allocator_tuned[0]
    changed = False
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        mallopt = None
    if mallopt is not None:
        for var, (param, value) in _MALLOPT.items():
            if var not in os.environ:
                changed = bool(mallopt(ctypes.c_int(param), ctypes.c_int(value))) or changed
    _allocator_tuned.append(changed)
    return changed


_warned_bf16: set[str] = set()


def resolve_amp(amp: str, device: Any, where: str = "train_seg.amp") -> str:
    """The autocast precision to run: ``"auto"`` is ``"bf16"`` where :func:`fast_bf16`, else ``"none"``
    (float32); an explicit choice is kept, with one warning per device type when bf16 is asked of hardware
    that only emulates it."""
    import torch

    if amp == "auto":
        return "bf16" if fast_bf16(device) else "none"
    dev = torch.device(device)
    if amp == "bf16" and not fast_bf16(dev) and dev.type not in _warned_bf16:
        _warned_bf16.add(dev.type)
        log.warning("%s = \"bf16\" on a %s without native bfloat16 (%s): it runs emulated, many times slower than "
                    "float32; set %s = \"auto\" to use bf16 only where the hardware has it", where, dev.type,
                    torch.backends.cpu.get_cpu_capability() if dev.type == "cpu" else dev, where)
    return amp


def distributed_context() -> tuple[int, int, bool]:
    """(rank, world size, distributed) under torchrun (the process group is set up on first use: nccl on GPUs,
    gloo on CPUs); (0, 1, False) otherwise."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def state_hash(sd: dict[str, Any]) -> str:
    """A short hash of a state dict's tensors (to check that DDP ranks ended with the same weights)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
