"""Stage bookkeeping for ``styleseg run``: skip a stage whose outputs exist for the same config.

Each finished stage writes ``RUN/stages/<name>.json`` = {hash, seconds, finished, outputs}. The hash
covers the stage's own resolved config and the hashes of the stages it reads from, so changing an
early stage re-runs everything downstream and nothing else. A stage that was interrupted has no
marker (markers are written last, atomically), so the next run repeats it; training stages resume from
their full-state checkpoints, so nothing already computed is lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from styleseg.config import config_hash
from styleseg.io.atomic import write_json

log = logging.getLogger("styleseg.stages")


@dataclass
class StageResult:
    name: str
    hash: str
    skipped: bool
    seconds: float
    outputs: list[str] = field(default_factory=list)


class StageRunner:
    """Runs named stages in a run folder, skipping those already done with the same hash."""

    def __init__(self, run_dir: Path, on_event: Callable[[str, str], None] | None = None):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.results: list[StageResult] = []
        self.on_event = on_event or (lambda name, what: None)

    def marker(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def done(self, name: str, h: str, outputs: Sequence[Path]) -> bool:
        m = self.marker(name)
        if not m.exists():
            return False
        try:
            rec = json.loads(m.read_text())
        except json.JSONDecodeError:
            return False
        return rec.get("hash") == h and all(Path(p).exists() for p in outputs)

    def up_to_date(self, name: str, cfg: Any, upstream: Sequence[str], outputs: Sequence[Path]) -> bool:
        """Whether ``run`` would skip the stage."""
        return self.done(name, config_hash(cfg, extra=list(upstream)), outputs)

    def run(self, name: str, cfg: Any, upstream: Sequence[str], outputs: Sequence[Path],
            fn: Callable[[], Any]) -> StageResult:
        """Run ``fn`` unless stage ``name`` finished before with the same config and upstream hashes (``fn`` may
        return its own duration in seconds, as a float, when its work ran elsewhere)."""
        h = config_hash(cfg, extra=list(upstream))
        if self.done(name, h, outputs):
            prev = json.loads(self.marker(name).read_text())
            res = StageResult(name, h, True, float(prev.get("seconds", 0.0)), [str(p) for p in outputs])
            log.debug("stage %-14s up to date (hash %s): skipped", name, h)
            self.on_event(name, "skipped")
            self.results.append(res)
            return res
        self.marker(name).unlink(missing_ok=True)
        self.on_event(name, "started")
        log.debug("stage %-14s running (hash %s)", name, h)
        t0 = time.perf_counter()
        ret = fn()
        # a stage whose work ran elsewhere (a worker process) reports its own duration
        dt = float(ret) if isinstance(ret, float) else time.perf_counter() - t0
        missing = [str(p) for p in outputs if not Path(p).exists()]
        if missing:
            raise RuntimeError(f"stage {name} finished but did not produce {missing}")
        write_json(self.marker(name), {"hash": h, "seconds": round(dt, 2), "finished": time.time(),
                                       "outputs": [str(p) for p in outputs]})
        res = StageResult(name, h, False, dt, [str(p) for p in outputs])
        self.on_event(name, f"done in {dt:.0f} s")
        self.results.append(res)
        return res

    def timings(self) -> dict[str, dict[str, Any]]:
        return {r.name: {"seconds": round(r.seconds, 2), "skipped": r.skipped, "hash": r.hash} for r in self.results}
