"""The multi-seed comparison of one or more run folders as Markdown tables (BENCHMARKS.md), from RUN/seeds.json.

    .venv/bin/python benchmarks/seeds_table.py runs/demo-seeds runs/demo-seeds-image=image_input

Each RUN (optionally ``RUN=LABEL``: its arms are shown as ``arm (LABEL)``) is a folder of ``styleseg run`` with
``seeds = [...]``. Printed: per arm and structure the Dice mean with its 95% CI over seeds x cases; the paired
difference to the run's reference arm with its CI (**bold** when the CI excludes 0, else unresolved); the share of
the oracle's gap an arm closes, (arm - reference) / (oracle - reference), where the oracle's gap is resolved; and
per arm whether every seed's training converged (best validation Dice of the last third of the epochs minus the
best before it < 0.01). Arms that two runs share (the same reference, reused) are printed once. Where a run has
same-scan pairs (RUN/agreement.json), its agreement over seeds and the paired difference to the reference follow.
``--pair A B`` adds the paired difference of arm A to arm B of each run (the same two-stage bootstrap over seeds x
cases, computed from the arms' metrics.json): e.g. two variants of one method, neither of them the reference;
``ARM@OTHER_RUN`` takes that arm from another run folder with the same seeds and test cases (a continued copy).
``--gap ORACLE CONTROL`` measures the gap against another arm than the reference (the fine-tuning design:
``--gap oracle_ft_ref reference_ft``): the paired gap ORACLE - CONTROL and, for every other arm, its paired
difference to CONTROL and the share of the gap it closes where the gap is resolved and positive. ``--cases TEXT``
restricts ``--pair`` and ``--gap`` to the test cases whose id contains TEXT: one protocol of a target re-imaged with
several (``--cases dose0.05-sharp``).
``--per-seed [STRUCTURE ...]`` (default: the oesophagus and the cord, the structures learnt last) adds, per arm and
seed, their test Dice and the training step at which their validation Dice first passed 0.3 (-: never).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STRUCTURES = ("lung_left", "lung_right", "heart", "esophagus", "spinal_cord", "body")


def load(spec: str) -> tuple[str, dict]:
    path, _, label = spec.partition("=")
    seeds = Path(path) / "seeds.json"
    if not seeds.exists():
        sys.exit(f"{seeds}: not found; run the experiment with `seeds = [...]` first")
    return label, json.loads(seeds.read_text())


def cell(d: dict | None, signed: bool = False) -> str:
    if not d or d.get("mean") is None and d.get("mean_diff") is None:
        return "-"
    m = d.get("mean_diff", d.get("mean"))
    if m != m:  # NaN: no cell where both arms have a value (e.g. found in neither scan)
        return "n/a"
    lo, hi = d["ci_low"], d["ci_high"]
    f = "{:+.3f}" if signed else "{:.3f}"
    text = f"{f.format(m)} [{f.format(lo)}, {f.format(hi)}]"
    return f"**{text}**" if signed and (lo > 0 or hi < 0) else text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="RUN or RUN=LABEL")
    ap.add_argument("--oracle", default="oracle_ref", help="the arm whose gap to the reference is the one to close")
    ap.add_argument("--pair", nargs=2, metavar=("A", "B"), help="also print arm A - arm B, paired, for each run")
    ap.add_argument("--gap", nargs=2, metavar=("ORACLE", "CONTROL"),
                    help="the share of the gap ORACLE - CONTROL each other arm closes, paired, for each run")
    ap.add_argument("--cases", metavar="TEXT", help="--pair and --gap over the cases whose id contains TEXT only")
    ap.add_argument("--per-seed", nargs="*", metavar="STRUCTURE",
                    help="per arm and seed: test Dice and first step with validation Dice > 0.3")
    args = ap.parse_args()
    rows, seen = [], set()
    for spec in args.runs:
        label, data = load(spec)
        for arm, entry in data["arms"].items():
            key = arm if arm in (data["reference"], args.oracle) else f"{arm}|{label}"
            if key in seen:
                continue
            seen.add(key)
            rows.append((arm if key == arm or not label else f"{arm} ({label})", arm, entry, data))
    structures = [s for s in STRUCTURES if any(s in r[2]["mean"] for r in rows)]
    head = "| arm | " + " | ".join(structures) + " | seeds | converged |"
    rule = "|---|" + "---|" * (len(structures) + 2)
    print("Dice, mean over seeds x cases [95% CI]\n\n" + head + "\n" + rule)
    for name, _, e, _ in rows:
        conv = e.get("convergence", [])
        ok = sum(bool(c.get("converged")) for c in conv)
        gains = [c["improvement_last_third"] for c in conv if c.get("improvement_last_third") is not None]
        cv = f"{ok}/{len(conv)} (last third {max(gains):+.3f})" if gains else "-"
        print(f"| {name} | " + " | ".join(cell(e["mean"].get(s, {}).get("dice")) for s in structures)
              + f" | {e['seeds']} | {cv} |")
    print("\nPaired difference to the reference [95% CI over seeds x cases]; bold: resolved\n")
    print("| arm - reference | " + " | ".join(structures) + " |\n|---|" + "---|" * len(structures))
    for name, _, e, _ in rows:
        if "vs_reference" in e:
            print(f"| {name} | " + " | ".join(cell(e["vs_reference"].get(s, {}).get("dice"), True)
                                              for s in structures) + " |")
    print("\nShare of the oracle's gap closed, (arm - reference) / (oracle - reference), where that gap is resolved\n")
    print("| arm | " + " | ".join(structures) + " |\n|---|" + "---|" * len(structures))
    for name, arm, e, data in rows:
        oracle = data["arms"].get(args.oracle, {}).get("vs_reference")
        if arm in (data["reference"], args.oracle) or not oracle or "vs_reference" not in e:
            continue
        cells = []
        for s in structures:
            g, d = oracle.get(s, {}).get("dice"), e["vs_reference"].get(s, {}).get("dice")
            if not g or not d or not (g["ci_low"] > 0 or g["ci_high"] < 0):
                cells.append("no gap")
            else:
                cells.append(f"{d['mean_diff'] / g['mean_diff']:+.0%}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.pair:
        for spec in args.runs:
            pair(spec, *args.pair, structures, args.cases)
    if args.gap:
        for spec in args.runs:
            gap(spec, *args.gap, structures, args.cases)
    for spec in args.runs:
        agreement(spec)
    if args.per_seed is not None:
        for spec in args.runs:
            per_seed_table(spec, args.per_seed or ["esophagus", "spinal_cord"])
    return 0


def _seed_dir(path: Path, arm: str, k: int, seed: int) -> Path:
    """Where an arm's seed lives in a run folder: arms/ARM/ for the first seed, arms/ARM/seedN/ for the others."""
    return path / "arms" / arm / ("" if k == 0 else f"seed{seed}")


def per_seed_table(spec: str, structures: list[str], threshold: float = 0.3) -> None:
    """Per arm and seed: each structure's test Dice (mean over cases) and the first training step at which its
    validation Dice passed ``threshold``, from the arm's metrics.json and train_log.jsonl."""
    path = Path(spec.partition("=")[0])
    data = json.loads((path / "seeds.json").read_text())
    seeds = data["seeds"]
    print(f"\n{path}: per seed, {' / '.join(structures)} test Dice (first step with validation > {threshold}; "
          "-: never)\n")
    print("| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |\n|---|" + "---|" * len(seeds))
    for arm in data["arms"]:
        cells = []
        for k, seed in enumerate(seeds):
            d = _seed_dir(path, arm, k, seed)
            if not (d / "metrics.json").exists():
                cells.append("-")
                continue
            mean = json.loads((d / "metrics.json").read_text())["mean"]
            log = d / "model" / "train_log.jsonl"
            recs = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
            dice = " / ".join(f"{mean[s]['dice']['mean']:.2f}" if s in mean else "-" for s in structures)
            first = [next((str(r["step"]) for r in recs if r["val_dice"].get(s, 0.0) > threshold), "-")
                     for s in structures]
            cells.append(f"{dice} ({' / '.join(first)})")
        print(f"| {arm} | " + " | ".join(cells) + " |")


def _arm_metrics(path: Path, arm: str, required: bool = True, cases: str | None = None) -> list[dict] | None:
    """An arm's metrics.json of every seed of the run, in the order of its seeds (None where a seed has none and
    the arm is not ``required``); with ``cases``, only the test cases whose id contains it."""
    seeds = json.loads((path / "seeds.json").read_text())["seeds"]
    files = [_seed_dir(path, arm, k, s) / "metrics.json" for k, s in enumerate(seeds)]
    missing = [f for f in files if not f.exists()]
    if missing and not required:
        return None
    if missing:
        sys.exit(f"{missing[0]}: not found; is {arm!r} an arm of {path} that finished every seed?")
    runs = [json.loads(f.read_text()) for f in files]
    if cases is not None:
        runs = [dict(m, cases=[c for c in m["cases"] if cases in c],
                     per_case=[c for c in m["per_case"] if cases in c["case"]]) for m in runs]
        if not any(m["cases"] for m in runs):
            sys.exit(f"{path}: no test case of {arm!r} has {cases!r} in its id")
    return runs


def gap(spec: str, oracle: str, control: str, structures: list[str], cases: str | None = None) -> None:
    """The gap oracle - control and, per other arm, arm - control and the share of the gap it closes (paired,
    over the run's seeds x cases), where the gap's CI excludes 0 and the gap is positive."""
    from styleseg.eval.seeds import compare_seeds

    path = Path(spec.partition("=")[0])
    arms = json.loads((path / "seeds.json").read_text())["arms"]
    ctrl = _arm_metrics(path, control, cases=cases)
    g = compare_seeds(_arm_metrics(path, oracle, cases=cases), ctrl, structures)
    where = f", cases *{cases}*" if cases else ""
    print(f"\n{path}{where}: the gap {oracle} - {control} and the share of it each arm closes, (arm - {control}) / "
          f"({oracle} - {control}) [95% CI over seeds x cases]; bold: resolved\n")
    print(f"| arm - {control} | " + " | ".join(structures) + " |\n|---|" + "---|" * len(structures))
    print(f"| {oracle} (the gap) | " + " | ".join(cell(g.get(s, {}).get("dice"), True) for s in structures) + " |")
    for arm in arms:
        if arm in (oracle, control):
            continue
        runs = _arm_metrics(path, arm, required=False, cases=cases)
        if runs is None:
            print(f"| {arm} | " + " | ".join("not finished" for _ in structures) + " |")
            continue
        d = compare_seeds(runs, ctrl, structures)
        cells = []
        for s in structures:
            gs, ds = g.get(s, {}).get("dice"), d.get(s, {}).get("dice")
            share = (f"{ds['mean_diff'] / gs['mean_diff']:+.0%} of " if gs and ds and gs["ci_low"] > 0 else "no gap; ")
            cells.append(share + cell(ds, True))
        print(f"| {arm} | " + " | ".join(cells) + " |")


def pair(spec: str, a: str, b: str, structures: list[str], cases: str | None = None) -> None:
    """Arm a minus arm b over the run's seeds x cases, as the run's difference to its reference is computed."""
    from styleseg.eval.seeds import compare_seeds

    path = Path(spec.partition("=")[0])

    def metrics(arm: str) -> list:  # ARM@OTHER_RUN: that arm of another run folder with the same seeds and cases
        name, _, other = arm.partition("@")
        return _arm_metrics(Path(other) if other else path, name, cases=cases)

    diff = compare_seeds(metrics(a), metrics(b), structures)
    where = f", cases *{cases}*" if cases else ""
    print(f"\n{path}{where}: paired difference {a} - {b} [95% CI over seeds x cases]; bold: resolved\n")
    print(f"| {a} - {b} | " + " | ".join(structures) + " |\n|---|" + "---|" * len(structures))
    print(f"| {path.name} | " + " | ".join(cell(diff.get(s, {}).get("dice"), True) for s in structures) + " |")


def agreement(spec: str) -> None:
    """The same-scan agreement of RUN/agreement.json over seeds: mean [CI] per arm (``*``: the structure was found
    in neither scan of a pair in that many seed x pair cells, which count as 1) and the paired difference to the
    reference."""
    path, _, label = spec.partition("=")
    f = Path(path) / "agreement.json"
    summ = json.loads(f.read_text()).get("summary") if f.exists() else None
    if not summ or not summ.get("arms"):
        return
    arms = summ["arms"]
    structures = [s for s in STRUCTURES if any(s in a["mean"] for a in arms.values())]
    title = f" ({label})" if label else ""
    print(f"\nAgreement on the same-scan pairs{title}: Dice between the two predictions, over seeds x pairs [95% CI]"
          "; (*k*: found in neither scan in k cells)\n")
    print("| arm | " + " | ".join(structures) + " |\n|---|" + "---|" * len(structures))
    for name, a in arms.items():
        cells = [cell(a["mean"].get(s)) + (f" (*{a['absent'][s]}*)" if a.get("absent", {}).get(s) else "")
                 for s in structures]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if any("vs_reference" in a for a in arms.values()):
        print(f"\nAgreement, paired difference to the reference ({summ.get('reference')}); bold: resolved\n")
        print("| arm - reference | " + " | ".join(structures) + " |\n|---|" + "---|" * len(structures))
        for name, a in arms.items():
            if "vs_reference" in a:
                print(f"| {name} | " + " | ".join(cell(a["vs_reference"].get(s), True) for s in structures) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
