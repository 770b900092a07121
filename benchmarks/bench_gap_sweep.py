"""Where does a texture gap survive a strong U-Net? The reference against the oracle on real CT, level by level.

Source: NSCLC-Radiomics LUNG1-001/-002/-004/-005 at their own texture (annotated). Target: the held-out patients
LUNG1-006 and LUNG1-009 re-imaged by the CT simulator at each shift level (dose fraction x reconstruction kernel),
their labels kept for evaluation only. At every level two U-Nets are compared, both with the reference recipe
(position channels + nnU-Net intensity augmentation, the quick preset's budget):

- **reference**: trained on the source alone (one model for every level: it never sees the target);
- **oracle_ref**: trained on the source and the source re-imaged at that level (the target's true texture on
  the source's anatomy): the upper bound of any texture augmentation.

Where the oracle beats the reference by a resolved margin (paired bootstrap over test cases), a texture gap
exists that augmentation could close. Each level is written as a run folder (``OUT/<level>/``, the run-folder
contract of ``styleseg report``) with its report; ``OUT/sweep.json`` and ``OUT/sweep.png`` hold the table and
the figure of Dice per structure against the shift. Trainings run ``--jobs`` at a time, one thread each.

    .venv/bin/python benchmarks/bench_gap_sweep.py --out runs/gap-sweep --jobs 2

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
TEST = ("LUNG1-006", "LUNG1-009")
DOSES = (1.0, 0.25, 0.1, 0.05)
KERNELS = ("standard", "sharp")
STRUCTURES = ("lung_left", "lung_right", "heart", "esophagus", "spinal_cord")


def level_name(dose: float, kernel: str) -> str:
    return f"dose{dose:g}-{kernel}"


def seg_config(seed: int, steps: int | None):
    from styleseg.seg.train import SegTrainConfig

    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), amp="bf16", position=True, seed=seed, val_slices=16)
    return dataclasses.replace(cfg, steps_per_epoch=steps) if steps else cfg


def train(datasets: list[str], out: str, seed: int, steps: int | None) -> str:
    """One reference-recipe U-Net (a process of its own, one thread)."""
    import torch

    from styleseg.data.domain import IntensityAugment
    from styleseg.seg.train import train_segmentation

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    if (Path(out) / "model.json").exists() and json.loads((Path(out) / "model.json").read_text()).get("complete"):
        return out
    resume = (Path(out) / "checkpoint.pt").exists()
    train_segmentation([Path(d) for d in datasets], Path(out), seg_config(seed, steps), resume=resume,
                       extra_transform=IntensityAugment(), progress=False)
    return out


def level_job(out: str, src: str, tgt: str, dose: float, kernel: str, seed: int, steps: int | None) -> str:
    """A level's data, then its oracle (a process of its own)."""
    _, oracle = level_data(Path(out), Path(src), Path(tgt), dose, kernel, seed)
    return train([src, str(oracle)], str(Path(out) / "models" / f"oracle_{level_name(dose, kernel)}"), seed, steps)


def prepare(out: Path) -> tuple[Path, Path]:
    """The source and the clean test target (imported once)."""
    from styleseg.pipeline.data import import_side

    nsclc, cases = DATA / "nsclc", str(DATA / "nsclc" / "cases.json")
    src, tgt = out / "data" / "source", out / "data" / "target_clean"
    if not (src / "dataset.json").exists():
        import_side((str(nsclc),), None, SOURCE, src, cases)
    if not (tgt / "dataset.json").exists():
        import_side((str(nsclc),), None, TEST, tgt, cases)
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


def evaluate_level(ldir: Path, target: Path, models: dict[str, Path]) -> dict:
    """Predict and evaluate each model on the level's target; write the run folder and its report."""
    from styleseg.eval.evaluate import evaluate
    from styleseg.eval.report import ArmInfo, RunInfo, write_report
    from styleseg.seg.segment import segment

    for arm, model in models.items():
        pred = ldir / "arms" / arm / "pred"
        segment([target], model, pred, continue_=True, dtype="bfloat16", channels_last=True)
        if arm != "reference":
            evaluate(pred, target, out=ldir / "arms" / arm / "metrics.json",
                     compare=ldir / "arms" / "reference" / "pred")
        else:
            evaluate(pred, target, out=ldir / "arms" / arm / "metrics.json")
        link = ldir / "arms" / arm / "model"
        if not link.exists():
            link.symlink_to(model.resolve(), target_is_directory=True)
    RunInfo(title=f"gap sweep, level {ldir.name}", arms=[ArmInfo("reference", "reference recipe, source only",
                                                                 "baseline"),
                                                         ArmInfo("oracle_ref", "reference recipe + source re-imaged "
                                                                 "at the level", "oracle")],
            baseline="reference", oracle="oracle_ref", reference="reference",
            target_ref="data/target_test").write(ldir)
    write_report(ldir)
    return json.loads((ldir / "arms" / "oracle_ref" / "metrics.json").read_text())


def summarise(out: Path, levels: list[tuple[float, str]]) -> dict:
    """sweep.json: per level and structure, the reference's and the oracle's Dice and their paired difference."""
    rows = {}
    for dose, kernel in levels:
        ldir = out / level_name(dose, kernel)
        ref = json.loads((ldir / "arms" / "reference" / "metrics.json").read_text())
        ora = json.loads((ldir / "arms" / "oracle_ref" / "metrics.json").read_text())
        row = {}
        for s in STRUCTURES:
            r, o = ref["mean"].get(s, {}).get("dice", {}), ora["mean"].get(s, {}).get("dice", {})
            d = ora.get("comparison", {}).get("structures", {}).get(s, {}).get("dice", {})
            row[s] = {"reference": r.get("mean"), "oracle": o.get("mean"), "gap": d.get("mean_diff"),
                      "gap_ci": [d.get("ci_low"), d.get("ci_high")],
                      "resolved": bool(d and d.get("ci_low") is not None and (d["ci_low"] > 0 or d["ci_high"] < 0))}
        rows[level_name(dose, kernel)] = {"dose": dose, "kernel": kernel, "structures": row}
    result = {"source": list(SOURCE), "test": list(TEST), "levels": rows}
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
            for arm, colour in (("reference", "C0"), ("oracle", "C3")):
                ax.plot(x, [v["structures"][s][arm] for v in lv], style, color=colour, marker="o",
                        label=f"{arm}, {kernel}")
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
    ap.add_argument("--doses", type=float, nargs="+", default=list(DOSES))
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS))
    ap.add_argument("--check-nps", action="store_true")
    a = ap.parse_args()
    if a.check_nps:
        check_nps()
        return
    a.out.mkdir(parents=True, exist_ok=True)
    src, tgt = prepare(a.out)
    levels = [(d, k) for k in a.kernels for d in a.doses]
    ref_model = a.out / "models" / "reference"
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        futures = [pool.submit(train, [str(src)], str(ref_model), a.seed, a.steps)]
        futures += [pool.submit(level_job, str(a.out), str(src), str(tgt), d, k, a.seed, a.steps) for d, k in levels]
        for f in futures:
            f.result()
    for lv in levels:
        target, _ = level_data(a.out, src, tgt, *lv, a.seed)
        evaluate_level(a.out / level_name(*lv), target,
                       {"reference": ref_model, "oracle_ref": a.out / "models" / f"oracle_{level_name(*lv)}"})
    result = summarise(a.out, levels)
    figure(a.out, result)
    print("| level | " + " | ".join(f"{s} ref / oracle (gap [CI])" for s in STRUCTURES) + " |")
    print("|---|" + "---|" * len(STRUCTURES))
    for name, v in result["levels"].items():
        cells = []
        for s in STRUCTURES:
            c = v["structures"][s]
            if c["reference"] is None or c["gap"] is None:
                cells.append("-")
                continue
            mark = "**" if c["resolved"] else ""
            cells.append(f"{c['reference']:.3f} / {c['oracle']:.3f} ({mark}{c['gap']:+.3f}{mark} "
                         f"[{c['gap_ci'][0]:+.3f}, {c['gap_ci'][1]:+.3f}])")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
