"""Where does a texture gap survive a strong U-Net? The reference against the oracle on real CT, level by level.

Source: NSCLC-Radiomics LUNG1-001/-002/-004/-005 at their own texture (annotated). Target: the held-out patients
LUNG1-006, LUNG1-008 and LUNG1-009 re-imaged by the CT simulator at each shift level (dose fraction x
reconstruction kernel), their labels kept for evaluation only (``--test`` picks them). Every U-Net has the
reference recipe (position channels + nnU-Net intensity augmentation):

- **reference**: trained on the source alone (one model for every level: it never sees the target);
- ``--oracle ft`` (default): the design of the arms ``reference_ft`` / ``oracle_ft_ref`` (pipeline/arms.py), which
  start from the reference's U-Net and train a third of its budget more at a third of its rate:
  **reference_ft** on the source alone (one model for every level), **oracle_ref** on the source and the source
  re-imaged at the level (the target's true texture on the source's anatomy: the upper bound of any texture
  augmentation on top of the reference). The gap is oracle_ref - reference_ft: the same steps, only the data
  differ;
- ``--oracle scratch``: **oracle_ref** trained from scratch on the source and the re-imaged source with the
  reference's budget; the gap is oracle_ref - reference.

Where the oracle beats its control by a resolved margin (paired bootstrap over test cases), a texture gap exists
that augmentation could close. Each level is written as a run folder (``OUT/<level>/``, the run-folder
contract of ``styleseg report``) with its report; ``OUT/sweep.json`` and ``OUT/sweep.png`` hold the table and
the figure of Dice per structure against the shift. Trainings and the levels' evaluations run ``--jobs`` at a
time, one thread each.

    .venv/bin/python benchmarks/bench_gap_sweep.py --out runs/gap-sweep --jobs 2 --epochs 20

The simulator's kernels against real scans: ``--check-nps`` prints the noise power spectra of the real
Lung-PET-CT-Dx A0001 sharp (L) / standard (B) pair and of the B reconstruction re-imaged by the simulator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SOURCE = ("LUNG1-001", "LUNG1-002", "LUNG1-004", "LUNG1-005")
TEST = ("LUNG1-006", "LUNG1-008", "LUNG1-009")
DOSES = (1.0, 0.25, 0.1, 0.05)
KERNELS = ("standard", "sharp")
STRUCTURES = ("lung_left", "lung_right", "heart", "esophagus", "spinal_cord")


def level_name(dose: float, kernel: str) -> str:
    return f"dose{dose:g}-{kernel}"


def seg_config(seed: int, steps: int | None, epochs: int | None = None, fine_tune: bool = False):
    """The reference recipe's U-Net settings; ``fine_tune``: with the fine-tuning arms' budget and rate."""
    from styleseg.pipeline.arms import ARMS
    from styleseg.seg.train import SegTrainConfig

    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), amp="bf16", position=True, seed=seed, val_slices=16)
    cfg = dataclasses.replace(cfg, steps_per_epoch=steps or cfg.steps_per_epoch, epochs=epochs or cfg.epochs)
    return ARMS["reference_ft"].budgeted(cfg) if fine_tune else cfg


def train(datasets: list[str], out: str, seed: int, steps: int | None, epochs: int | None = None,
          init_from: str | None = None) -> str:
    """One reference-recipe U-Net (a process of its own, one thread); ``init_from``: a fine-tuning of that model."""
    import torch

    from styleseg.data.domain import IntensityAugment
    from styleseg.seg.train import train_segmentation

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    if (Path(out) / "model.json").exists() and json.loads((Path(out) / "model.json").read_text()).get("complete"):
        return out
    resume = (Path(out) / "checkpoint.pt").exists()
    train_segmentation([Path(d) for d in datasets], Path(out), seg_config(seed, steps, epochs, init_from is not None),
                       resume=resume, extra_transform=IntensityAugment(), progress=False,
                       init_from=Path(init_from) if init_from else None)
    return out


def level_job(out: str, src: str, tgt: str, dose: float, kernel: str, seed: int) -> str:
    """A level's data (a process of its own)."""
    _, oracle = level_data(Path(out), Path(src), Path(tgt), dose, kernel, seed)
    return str(oracle)


def prepare(out: Path, test: tuple[str, ...] = TEST) -> tuple[Path, Path]:
    """The source and the clean test target (imported once)."""
    from styleseg.pipeline.data import import_side

    nsclc, cases = DATA / "nsclc", str(DATA / "nsclc" / "cases.json")
    src, tgt = out / "data" / "source", out / "data" / "target_clean"
    if not (src / "dataset.json").exists():
        import_side((str(nsclc),), None, SOURCE, src, cases)
    if not (tgt / "dataset.json").exists():
        import_side((str(nsclc),), None, test, tgt, cases)
    return src, tgt


def level_data(out: Path, src: Path, tgt: Path, dose: float, kernel: str, seed: int) -> tuple[Path, Path]:
    """The level's test target (labels -> labelsRef) and the oracle's training data (source + re-imaged)."""
    from styleseg.sim.benchmark import reimage_dataset
    from styleseg.sim.scanner import get_protocol

    prot = get_protocol(dose_fraction=dose, kernel=kernel)
    ldir = out / level_name(dose, kernel)
    target, oracle = ldir / "data" / "target_test", ldir / "data" / "oracle"
    if not (target / "dataset.json").exists():
        reimage_dataset(tgt, target, [prot], np.random.default_rng([seed, 1]), noise_free_input=False,
                        name=f"target at {prot.name}", label_role="labelsRef")
    if not (oracle / "dataset.json").exists():
        reimage_dataset(src, oracle, [prot], np.random.default_rng([seed, 2]), noise_free_input=False,
                        name=f"oracle at {prot.name}", keep_original=True, labelled_only=True)
    return target, oracle


#: the arms of a level's run folder: (name, what it is, role, the arm its paired difference is taken to)
ARM_INFO = {
    "ft": (("reference", "reference recipe, source only", "baseline", None),
           ("reference_ft", "the reference fine-tuned on the source (a third more steps, a third of the rate)",
            "reference", "reference"),
           ("oracle_ref", "the reference fine-tuned on the source + the source re-imaged at the level", "oracle",
            "reference_ft")),
    "scratch": (("reference", "reference recipe, source only", "baseline", None),
                ("oracle_ref", "reference recipe + source re-imaged at the level", "oracle", "reference")),
}


def evaluate_level(ldir: Path, target: Path, models: dict[str, Path], design: str) -> None:
    """Predict and evaluate each model on the level's target; write the run folder and its report (a process of
    its own, one thread)."""
    import torch

    from styleseg.eval.evaluate import evaluate
    from styleseg.eval.report import ArmInfo, RunInfo, write_report
    from styleseg.seg.segment import segment

    torch.set_num_threads(1)
    arms = ARM_INFO[design]
    for arm, _, _, versus in arms:
        pred = ldir / "arms" / arm / "pred"
        segment([target], models[arm], pred, continue_=True, dtype="bfloat16", channels_last=True)
        evaluate(pred, target, out=ldir / "arms" / arm / "metrics.json",
                 compare=ldir / "arms" / versus / "pred" if versus else None)
        link = ldir / "arms" / arm / "model"
        if not link.exists():
            link.symlink_to(models[arm].resolve(), target_is_directory=True)
    control = arms[-1][3]
    RunInfo(title=f"gap sweep, level {ldir.name}", arms=[ArmInfo(n, t, r) for n, t, r, _ in arms],
            baseline="reference", oracle="oracle_ref", reference=control, target_ref="data/target_test").write(ldir)
    write_report(ldir)


def summarise(out: Path, levels: list[tuple[float, str]], design: str, test: tuple[str, ...]) -> dict:
    """sweep.json: per level and structure, the control's and the oracle's Dice and their paired difference (the
    control: reference_ft for ``ft``, the reference for ``scratch``; the reference's Dice too)."""
    control = ARM_INFO[design][-1][3]
    rows = {}
    for dose, kernel in levels:
        ldir = out / level_name(dose, kernel)
        m = {a: json.loads((ldir / "arms" / a / "metrics.json").read_text()) for a, *_ in ARM_INFO[design]}
        row = {}
        for s in STRUCTURES:
            d = m["oracle_ref"].get("comparison", {}).get("structures", {}).get(s, {}).get("dice", {})
            row[s] = {"reference": m["reference"]["mean"].get(s, {}).get("dice", {}).get("mean"),
                      "control": m[control]["mean"].get(s, {}).get("dice", {}).get("mean"),
                      "oracle": m["oracle_ref"]["mean"].get(s, {}).get("dice", {}).get("mean"),
                      "gap": d.get("mean_diff"), "gap_ci": [d.get("ci_low"), d.get("ci_high")],
                      "resolved": bool(d and d.get("ci_low") is not None and (d["ci_low"] > 0 or d["ci_high"] < 0))}
        rows[level_name(dose, kernel)] = {"dose": dose, "kernel": kernel, "structures": row}
    result = {"source": list(SOURCE), "test": list(test), "design": design, "control": control, "levels": rows}
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    return result


def figure(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STRUCTURES), figsize=(3.2 * len(STRUCTURES), 3.2), sharey=True, dpi=110)
    for ax, s in zip(axes, STRUCTURES, strict=True):
        for kernel, style in zip(KERNELS, ("-", "--"), strict=True):
            lv = [v for v in result["levels"].values() if v["kernel"] == kernel]
            if not lv:  # a kernel the sweep did not run gets no (empty) line in the legend
                continue
            lv.sort(key=lambda v: -v["dose"])
            x = [v["dose"] for v in lv]
            arms = (("reference", "C0"),) + ((("control", "C2"),) if result["control"] != "reference" else ()) + \
                (("oracle", "C3"),)
            for arm, colour in arms:
                name = result["control"] if arm == "control" else arm
                ax.plot(x, [v["structures"][s][arm] for v in lv], style, color=colour, marker="o",
                        label=f"{name}, {kernel}")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_title(s)
        ax.set_xlabel("dose fraction")
    axes[0].set_ylabel("Dice")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "sweep.png")


def check_nps() -> None:
    """The real sharp/standard pair against the simulator's kernels re-imaging its standard reconstruction."""
    from styleseg.io.volume import read_nifti
    from styleseg.sim.scanner import get_protocol, reimage
    from styleseg.texture import nps_distance, slice_nps

    k = DATA / "kernel-pairs"
    real_l, real_b = read_nifti(k / "A0001_kernel-L_ct.nii.gz"), read_nifti(k / "A0001_kernel-B_ct.nii.gz")
    zs, sp = (28, 32, 36), real_b.spacing[0]
    nl = [slice_nps(real_l.array[z].astype(np.float64), sp) for z in zs]
    nb = [slice_nps(real_b.array[z].astype(np.float64), sp) for z in zs]
    print("| texture | noise std (HU) | NPS peak (cycles/mm) | d(., real L) | d(., real B) |")
    print("|---|---|---|---|---|")
    for name, res in (("real L (Philips sharp)", nl), ("real B (Philips standard)", nb)):
        print(f"| {name} | {np.mean([r.std for r in res]):.1f} | {np.mean([r.peak_freq for r in res]):.3f} | "
              f"{np.mean([nps_distance(a, b) for a, b in zip(res, nl, strict=True)]):.3f} | "
              f"{np.mean([nps_distance(a, b) for a, b in zip(res, nb, strict=True)]):.3f} |")
    rng = np.random.default_rng(0)
    for kernel in KERNELS + ("lung",):
        for dose in DOSES:
            prot = get_protocol(dose_fraction=dose, kernel=kernel)
            res = [slice_nps(reimage(real_b.array[z].astype(np.float32), sp, prot, rng, noise_free_input=False)
                             .astype(np.float64), sp) for z in zs]
            print(f"| simulated {prot.name} from B | {np.mean([r.std for r in res]):.1f} | "
                  f"{np.mean([r.peak_freq for r in res]):.3f} | "
                  f"{np.mean([nps_distance(a, b) for a, b in zip(res, nl, strict=True)]):.3f} | "
                  f"{np.mean([nps_distance(a, b) for a, b in zip(res, nb, strict=True)]):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/gap-sweep"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch (default: the quick preset's 150)")
    ap.add_argument("--epochs", type=int, default=None, help="the reference's epochs (default: the quick preset's 12)")
    ap.add_argument("--oracle", choices=tuple(ARM_INFO), default="ft",
                    help="ft: the oracle fine-tunes the reference, against reference_ft; scratch: from scratch")
    ap.add_argument("--doses", type=float, nargs="+", default=list(DOSES))
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS))
    ap.add_argument("--test", nargs="+", default=list(TEST), help="the held-out NSCLC cases of the target")
    ap.add_argument("--check-nps", action="store_true")
    a = ap.parse_args()
    if a.check_nps:
        check_nps()
        return
    a.out.mkdir(parents=True, exist_ok=True)
    test = tuple(a.test)
    src, tgt = prepare(a.out, test)
    levels = [(d, k) for k in a.kernels for d in a.doses]
    models = a.out / "models"
    ref, ref_ft = models / "reference", models / "reference_ft"
    oracle = {lv: models / f"oracle_{level_name(*lv)}" for lv in levels}
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        futures = [pool.submit(train, [str(src)], str(ref), a.seed, a.steps, a.epochs)]
        data = {lv: pool.submit(level_job, str(a.out), str(src), str(tgt), *lv, a.seed) for lv in levels}
        init = None
        if a.oracle == "ft":  # the fine-tunings wait for the reference
            futures[0].result()
            init = str(ref)
            futures.append(pool.submit(train, [str(src)], str(ref_ft), a.seed, a.steps, a.epochs, init))
        futures += [pool.submit(train, [str(src), data[lv].result()], str(oracle[lv]), a.seed, a.steps, a.epochs,
                                init) for lv in levels]
        for f in futures:
            f.result()
        futures = [pool.submit(evaluate_level, a.out / level_name(*lv), level_data(a.out, src, tgt, *lv, a.seed)[0],
                               {"reference": ref, "reference_ft": ref_ft, "oracle_ref": oracle[lv]}, a.oracle)
                   for lv in levels]
        for f in futures:
            f.result()
    result = summarise(a.out, levels, a.oracle, test)
    figure(a.out, result)
    control = result["control"]
    print("| level | " + " | ".join(f"{s} ref / {control} / oracle (oracle - {control} [CI])" for s in STRUCTURES)
          + " |")
    print("|---|" + "---|" * len(STRUCTURES))
    for name, v in result["levels"].items():
        cells = []
        for s in STRUCTURES:
            c = v["structures"][s]
            if c["reference"] is None or c["gap"] is None:
                cells.append("-")
                continue
            mark = "**" if c["resolved"] else ""
            cells.append(f"{c['reference']:.3f} / {c['control']:.3f} / {c['oracle']:.3f} ({mark}{c['gap']:+.3f}{mark} "
                         f"[{c['gap_ci'][0]:+.3f}, {c['gap_ci'][1]:+.3f}])")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
