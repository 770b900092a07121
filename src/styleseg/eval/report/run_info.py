"""The run-folder contract: ``RUN/run.json``, written by the pipeline and read by the report.

One typed record (:class:`RunInfo`) is the only thing either side touches, so what the pipeline writes is
what the report reads. Paths inside it are relative to the run folder, so a run folder can be moved or
reported from any working directory. :meth:`RunInfo.read` also reads the run.json of earlier versions
(``arms`` as a list of names with ``arm_titles``, or as a mapping of descriptions; ``target_ref`` relative
to the working directory the run was started from).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RUN_JSON = "run.json"
RUN_FORMAT_VERSION = 2


@dataclass(frozen=True)
class ArmInfo:
    """One arm of a run: its name, what it is (``title``), and its role in the comparison."""

    name: str
    title: str = ""
    role: str = ""  # "baseline", "reference", "oracle" or ""


@dataclass
class RunInfo:
    """What ``RUN/run.json`` holds (see the module docstring)."""

    title: str = ""
    arms: list[ArmInfo] = field(default_factory=list)
    baseline: str | None = None
    oracle: str | None = None
    reference: str | None = None
    target_ref: str | None = None  # the evaluation dataset, relative to the run folder
    preset: str | None = None
    seeds: list[int] = field(default_factory=list)
    stages: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    description: str | None = None
    format_version: int = RUN_FORMAT_VERSION

    def arm(self, name: str) -> ArmInfo | None:
        return next((a for a in self.arms if a.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, run_dir: str | Path) -> Path:
        from styleseg.io.atomic import write_json

        path = Path(run_dir) / RUN_JSON
        write_json(path, self.to_json())
        return path

    def target_path(self, run_dir: str | Path) -> Path | None:
        """The evaluation dataset as a path (None if the run has none)."""
        return None if self.target_ref is None else resolve_in_run(run_dir, self.target_ref)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunInfo:
        """From run.json of this or an earlier version (unknown keys are ignored)."""
        arms = _arms(d)
        seeds = d.get("seeds")
        if not isinstance(seeds, list):
            seeds = [d["seed"]] if isinstance(d.get("seed"), int) else []
        return cls(title=str(d.get("title") or ""), arms=arms, baseline=_str(d.get("baseline")),
                   oracle=_str(d.get("oracle")), reference=_str(d.get("reference")),
                   target_ref=_str(d.get("target_ref")), preset=_str(d.get("preset")),
                   seeds=[int(s) for s in seeds if isinstance(s, int)],
                   stages=dict(d["stages"]) if isinstance(d.get("stages"), Mapping) else {},
                   config=dict(d["config"]) if isinstance(d.get("config"), Mapping) else None,
                   description=_str(d.get("description")))

    @classmethod
    def read(cls, run_dir: str | Path) -> RunInfo:
        """Read RUN/run.json; a missing file gives an empty record, invalid JSON raises json.JSONDecodeError."""
        path = Path(run_dir) / RUN_JSON
        if not path.exists():
            return cls()
        return cls.from_json(json.loads(path.read_text()))


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _arms(d: Mapping[str, Any]) -> list[ArmInfo]:
    raw = d.get("arms")
    titles = d.get("arm_titles") if isinstance(d.get("arm_titles"), Mapping) else {}
    roles = {str(d[k]): k for k in ("baseline", "reference", "oracle") if d.get(k)}
    out = []
    if isinstance(raw, Mapping):  # {name: {"description": ...} | "description"}
        for name, v in raw.items():
            desc = v.get("description", v.get("title", "")) if isinstance(v, Mapping) else str(v or "")
            out.append(ArmInfo(str(name), str(desc), roles.get(str(name), "")))
    elif isinstance(raw, list):
        for v in raw:
            if isinstance(v, Mapping) and "name" in v:
                out.append(ArmInfo(str(v["name"]), str(v.get("title", "")), str(v.get("role", ""))
                                   or roles.get(str(v["name"]), "")))
            elif isinstance(v, str):
                out.append(ArmInfo(v, str(titles.get(v, "")), roles.get(v, "")))
    return out


def resolve_in_run(run_dir: str | Path, ref: str) -> Path:
    """A path recorded in run.json as a path: absolute as it is; relative to the run folder; or, for run folders
    of earlier versions that stored it relative to the working directory (``demo-run/data/target_test``), the
    longest tail of it that exists under the run folder."""
    p = Path(ref)
    run = Path(run_dir)
    if p.is_absolute() or (run / p).exists():
        return p if p.is_absolute() else run / p
    parts = p.parts
    for i in range(1, len(parts)):
        tail = run.joinpath(*parts[i:])
        if tail.exists():
            return tail
    return run / p
