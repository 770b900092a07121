"""Configuration machinery: frozen dataclasses, presets, TOML load/dump, validation, hashing.

Each stage owns one frozen dataclass (defined next to the stage, e.g. ``style.train.GeneratorConfig``)
and ``pipeline.ExperimentConfig`` composes them. This module provides what they share:

- :func:`from_dict` builds a dataclass from a mapping and rejects unknown keys with a "did you mean"
  hint naming the file and section (a config typo must never be silently ignored);
- :func:`to_dict` / :func:`dump_toml` write the resolved config into run and model folders;
- :func:`config_hash` gives the stable hash that lets a pipeline stage skip work it already did; options
  added later are declared with :func:`new_option` and leave the hash alone at their default, so an
  upgrade does not redo finished stages;
- presets: ``"quick"`` (2 CPU cores, minutes) and ``"paper"`` (GPU, the paper's settings).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from styleseg.errors import ConfigError, InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS = ("quick", "paper")
T = TypeVar("T")


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "config file does not exist", "check the path")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(path, f"invalid TOML: {e}") from e


def dump_toml(obj: Mapping[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(_tomlable(obj))


def _tomlable(o: Any) -> Any:
    if isinstance(o, Mapping):
        return {str(k): _tomlable(v) for k, v in o.items() if v is not None}
    if isinstance(o, list | tuple):
        return [_tomlable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    return o


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass (nested ones too) as plain JSON/TOML-able data."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return conv(cfg)


HASH_NEUTRAL = "hash_neutral"


def new_option(default: Any) -> Any:
    """A dataclass field for an option added after runs were made: at ``default`` (the behaviour from before
    the option existed) it is left out of :func:`config_hash`, so adding it does not invalidate finished runs
    and models; any other value changes the hash as usual. ``default`` must be immutable."""
    return dataclasses.field(default=default, metadata={HASH_NEUTRAL: True})


def hash_view(cfg: Any) -> Any:
    """:func:`to_dict`, minus :func:`new_option` fields at their default (nested dataclasses too): what a
    stage hashes. Build stage configs from this, not from :func:`to_dict` (which keeps every field)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: hash_view(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if not (f.metadata.get(HASH_NEUTRAL) and getattr(cfg, f.name) == f.default)}
    if isinstance(cfg, tuple | list):
        return [hash_view(x) for x in cfg]
    if isinstance(cfg, Mapping):
        return {str(k): hash_view(x) for k, x in cfg.items()}
    return to_dict(cfg)


def config_hash(cfg: Any, extra: Any = None) -> str:
    """Stable 16-hex-digit hash of a config (and optional extra inputs, e.g. upstream hashes). Options declared
    with :func:`new_option` count only when set to something other than their default."""
    blob = json.dumps({"cfg": hash_view(cfg), "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _resolve_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=False)) if args else tuple(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError.

    ``where`` names the place for messages, e.g. ``"experiment.toml [train_seg]"``.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, sorted(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(names))}"
        raise ConfigError(f"{where}: unknown key {k!r}{hint}")
    kwargs = {k: _coerce(_resolve_type(cls, k), v, f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return obj


def check_preset(name: str) -> str:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; choose one of {', '.join(PRESETS)}")
    return name
