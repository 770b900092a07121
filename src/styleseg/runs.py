"""Run folders, seeding, device choice, logging, and full-state checkpoints.

Checkpoints hold everything needed to continue exactly (house style 5): model and optimiser state,
scheduler and AMP scaler, epoch/step counters, every RNG state (python, numpy, torch CPU and CUDA),
and the resolved config. They are written atomically and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.io.atomic import atomic_path

log = logging.getLogger("styleseg")


def seed_everything(seed: int) -> None:
    """The one seeding function: python, numpy, torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def choose_device(pref: str = "auto"):
    """'auto' -> cuda if available, else cpu; or an explicit torch device string, which must exist on this
    machine (a ConfigError names the fix otherwise, instead of a CUDA traceback at the first tensor)."""
    import torch

    from styleseg.errors import ConfigError

    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(pref)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"--device {pref!r}: not a device (fix: auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"--device {pref}: this machine has no CUDA GPU (fix: --device cpu or auto)")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"--device {pref}: this machine has {n} CUDA GPU(s), cuda:0..cuda:{n - 1} "
                              "(fix: a device that exists, or auto)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {pref}: no Apple MPS device here (fix: --device cpu or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {pref}: styleseg runs on cpu, cuda or mps (fix: --device cpu or auto)")
    return dev


def setup_logging(level: int = logging.INFO, logfile: str | Path | None = None) -> None:
    root = logging.getLogger("styleseg")
    root.setLevel(level)
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
        try:
            from rich.logging import RichHandler

            h: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        except ImportError:  # pragma: no cover
            h = logging.StreamHandler()
        root.addHandler(h)
    if logfile is not None:
        fh = logging.FileHandler(logfile)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)


def rng_state() -> dict[str, Any]:
    import torch

    st: dict[str, Any] = {
        "python": _py_state_to_tensorable(random.getstate()),
        "numpy": _np_state_to_tensorable(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import torch

    random.setstate(_py_state_from_tensorable(st["python"]))
    np.random.set_state(_np_state_from_tensorable(st["numpy"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# weights_only=True loading accepts tensors, dicts, lists, tuples, ints, floats, strings: convert
# the python and numpy RNG states into those.
def _py_state_to_tensorable(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def _py_state_from_tensorable(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def _np_state_to_tensorable(s: tuple) -> list:
    import torch

    return [s[0], torch.from_numpy(np.asarray(s[1], np.int64)), int(s[2]), int(s[3]), float(s[4])]


def _np_state_from_tensorable(s: list) -> tuple:
    return (s[0], s[1].numpy().astype(np.uint32), s[2], s[3], s[4])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a full-state checkpoint atomically (adds the RNG states)."""
    import torch

    state = dict(state)
    state.setdefault("rng", rng_state())
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", restore_rng: bool = True) -> dict[str, Any]:
    from styleseg.errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint does not exist")
    state = _torch_load(path, "checkpoint", map_location,
                        "re-create it with styleseg: train again without --resume, or restore the checkpoint "
                        "styleseg wrote")
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (per-epoch stats)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
MODEL_FORMAT_VERSION = 1


def write_model_folder(folder: str | Path, kind: str, model_json: dict[str, Any], state_dict: dict[str, Any],
                       overwrite: bool = True) -> Path:
    """Write ``model.json`` (architecture, label schema, preprocessing, config, versions) and
    ``weights.pt`` (a plain state dict, loadable with ``torch.load(weights_only=True)``).

    Weights are written first and model.json last, each atomically, so a folder with a model.json is
    complete.
    """
    import torch

    from styleseg import __version__
    from styleseg.io.atomic import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MODEL_JSON).exists() and not overwrite:
        raise FileExistsError(folder / MODEL_JSON)
    with atomic_path(folder / WEIGHTS) as tmp:
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp)
    meta = {"kind": kind, "format_version": MODEL_FORMAT_VERSION, "styleseg_version": __version__,
            "torch_version": torch.__version__, **model_json}
    write_json(folder / MODEL_JSON, meta)
    return folder


def read_model_folder(folder: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read and check a model folder; returns (model_json, state_dict). Errors name the file."""

    from styleseg.errors import InputError

    folder = Path(folder)
    mj = folder / MODEL_JSON
    if not folder.is_dir():
        raise InputError(folder, "model folder does not exist", "check the path or train a model first")
    if not mj.exists():
        raise InputError(mj, "missing model.json: not a styleseg model folder, or training did not finish")
    try:
        meta = json.loads(mj.read_text())
    except json.JSONDecodeError as e:
        raise InputError(mj, f"invalid JSON ({e})") from e
    if meta.get("kind") != kind:
        raise InputError(mj, f"is a {meta.get('kind')!r} model, expected a {kind!r} model")
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise InputError(mj, f"model format version {meta.get('format_version')} (styleseg "
                         f"{meta.get('styleseg_version')}) is not supported by this version "
                         f"(format {MODEL_FORMAT_VERSION})", "retrain the model with this version")
    w = folder / WEIGHTS
    if not w.exists():
        raise InputError(w, "weights file is missing", "copy the whole model folder, or retrain")
    sd = _torch_load(w, "weights", "cpu", "re-create the model with styleseg (`styleseg train-seg` / "
                     "`styleseg train-styles`), or restore the folder's original weights.pt")
    return meta, sd


def _torch_load(path: Path, what: str, map_location: Any, fix: str) -> Any:
    """``torch.load(weights_only=True)`` with errors in styleseg's words.

    A file holding pickled Python objects is refused with our own advice: torch's message suggests
    retrying with ``weights_only=False``, which would run whatever code the file holds, and styleseg
    never does that (its files hold tensors and plain containers only).
    """
    import pickle

    import torch

    from styleseg.errors import InputError

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        which = f" (it refers to {found.group(1)})" if found else ""
        raise InputError(path, f"cannot load {what}: the file holds pickled Python objects{which}, not only tensors; "
                         "styleseg never loads pickled code, since unpickling can run anything", fix) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        first = first.split(". This is an internal miniz error")[0]
        raise InputError(path, f"cannot load {what} ({type(e).__name__}: {first}); the file is corrupt or "
                         "truncated, or from an incompatible version", fix) from e
