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
import math
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
    stage hashes. Build stage configs from this, not from :func:`to_dict` (which keeps every field). A
    dataclass with a ``hash_fields()`` method hashes what that returns (a config regrouped into sections
    keeps the flat hash of its first version, so finished runs stay finished). A dataclass with a ``hash_resolved()``
    method hashes the dataclass it returns: an option whose default depends on other options is hashed at the
    value it takes, so leaving it unset and setting it to that value hash alike."""
    if hasattr(cfg, "hash_resolved") and dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = cfg.hash_resolved()
    if hasattr(cfg, "hash_fields") and dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {str(k): hash_view(v) for k, v in cfg.hash_fields().items()}
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


#: scalar types: (accepts, what a wrong value is called in the message, convert)
_SCALARS: dict[Any, tuple[Any, str, Any]] = {
    bool: (lambda v: isinstance(v, bool), "true or false", bool),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", int),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v), "a finite number",
            float),
    str: (lambda v: isinstance(v, str), "a string", str),
}


def _coerce_union(args: tuple[Any, ...], value: Any, where: str) -> Any:
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


def _coerce_tuple(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], v, where) for v in value)
    if args and len(args) != len(value):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
    return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=False)) if args else tuple(value)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` (from TOML/JSON) as type ``tp``, or ConfigError naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(args, value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        return _coerce_tuple(args, value, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp in _SCALARS:
        ok, what, conv = _SCALARS[tp]
        if not ok(value):
            raise ConfigError(f"{where}: expected {what}, got {value!r}")
        return conv(value)
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError.

    ``where`` names the place for messages, e.g. ``"experiment.toml [train_seg]"``.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data = _route_flat(cls, data, where)
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, sorted(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(names))}"
        raise ConfigError(f"{where}: unknown key {k!r}{hint}")
    kwargs = {k: _coerce(_resolve_type(cls, k), v, f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except ConfigError as e:  # a value the class itself refuses: name the file and section too
        if str(e).startswith(where):
            raise
        raise ConfigError(f"{where}: {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return obj


def _route_flat(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Keys of a sectioned config given flat (``steps = 60`` for ``[generators.optim] steps``): a class with a
    ``flat_keys()`` classmethod ({key: section}) accepts both spellings; the same key in both is an error."""
    data = dict(data)
    if not hasattr(cls, "flat_keys"):
        return data
    routes = cls.flat_keys()
    for key in [k for k in data if k in routes]:
        section = routes[key]
        table = dict(data.get(section) or {})
        if key in table:
            raise ConfigError(f"{where}: {key!r} is given twice (flat and in [{section}])")
        table[key] = data.pop(key)
        data[section] = table
    return data


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested tables merge key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def resolve(cls: type[T], preset: str | None, *overrides: Mapping[str, Any] | None, where: str = "config") -> T:
    """The one way to build a stage config: ``cls.preset(preset)`` (``cls()`` when ``preset`` is None or the
    class has no presets), then each mapping of ``overrides`` on top, in order (later wins; None and empty
    mappings are skipped), through :func:`from_dict`, so unknown keys, wrong types and impossible values fail
    with a message naming ``where``. A sectioned config (``flat_keys()``) takes flat or sectioned overrides."""
    base = cls.preset(preset) if preset is not None and hasattr(cls, "preset") else cls()  # type: ignore[attr-defined]
    merged: dict[str, Any] = to_dict(base)
    for over in overrides:
        if over:
            merged = _merge(merged, _route_flat(cls, over, where))
    return from_dict(cls, merged, where)


def given(**options: Any) -> dict[str, Any]:
    """The options a command line actually gave (None: not given), as an override mapping for :func:`resolve`."""
    return {k: v for k, v in options.items() if v is not None}


def check_preset(name: str) -> str:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; choose one of {', '.join(PRESETS)}")
    return name
