"""benchmarks/seeds_table.py --gap and --cases on a hand-made run folder: the share of the gap is hand-computed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = ("p1_dose0.05-sharp", "p2_dose0.05-sharp", "p1_dose0.05-standard", "p2_dose0.05-standard")


def _run(tmp: Path) -> Path:
    """Seeds 0 and 1 (the same values) of three arms on four cases: control 0.50 everywhere; oracle 0.60 on the
    sharp cases and 0.50 on the standard ones; arm 0.55 on the sharp cases (half the oracle's gain) and 0.48 on the
    standard ones."""
    heart = {"control": (0.50, 0.50), "oracle": (0.60, 0.50), "arm": (0.55, 0.48)}
    run = tmp / "run"
    for arm, (sharp, standard) in heart.items():
        for folder in ("", "seed1"):
            d = run / "arms" / arm / folder
            d.mkdir(parents=True, exist_ok=True)
            per_case = [{"case": c, "metrics": {"heart": {"dice": sharp if "sharp" in c else standard}}}
                        for c in CASES]
            (d / "metrics.json").write_text(json.dumps({"cases": list(CASES), "per_case": per_case}))
    (run / "seeds.json").write_text(json.dumps({"seeds": [0, 1], "reference": "control", "arms": {
        a: {"mean": {"heart": {}}, "seeds": 2} for a in heart}}))
    return run


def _table(run: Path, *args: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds_table.py"), str(run), "--gap", "oracle",
                          "control", *args], capture_output=True, text=True, check=True).stdout
    rows = out.split("the gap oracle - control")[1].split("\n\n")[1].splitlines()[2:]
    return {r.split(" | ")[0][2:]: r.split(" | ")[1].removesuffix(" |") for r in rows}


def test_gap_share_over_all_cases_and_one_protocol(tmp_path: Path) -> None:
    run = _run(tmp_path)
    # all four cases: gap +0.05 (0.10 on two cases, 0 on two), arm +0.015 ((0.05 + 0.05 - 0.02 - 0.02) / 4):
    # 30% of it; the gap's CI over cases excludes 0 only where every resample holds a sharp case, so it is not
    # resolved and no share is given
    rows = _table(run)
    assert rows["oracle (the gap)"].startswith("+0.050 [+0.000, +0.100]")
    assert rows["arm"].startswith("no gap; +0.015 [")
    # the sharp cases alone: gap +0.100 on every case and seed (resolved), arm +0.050: 50% of it
    rows = _table(run, "--cases", "sharp")
    assert rows["oracle (the gap)"] == "**+0.100 [+0.100, +0.100]**"
    assert rows["arm"] == "+50% of **+0.050 [+0.050, +0.050]**"
    assert set(rows) == {"oracle (the gap)", "arm"}
