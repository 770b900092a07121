"""Issue 14: whose segment means should a restyled slice have, the style slice's or the source's own?

    .venv/bin/python benchmarks/bench_restyled_means.py RUN [--structure heart] [--seed 0]

RUN: a finished run folder of ``styleseg run`` with ``source_skip`` generators (e.g. ``examples/real-ct-dose005-
seeds.toml``'s), ``arms/reference/model``, ``data/source``, ``styles`` and, if the run has an oracle arm,
``data/oracle``. Trains the run's generators for ``--seed`` twice into RUN/bench_means/ (``style``: every segment
at the style slice's mean, ``source_means = false``; ``source``: the source slice's own mean and the style's
texture, the default of ``source_skip`` generators), restyles every source slice that holds ``--structure`` with
each, and prints the reference U-Net's Dice per structure on them, beside the same slices unrestyled and re-imaged
with the target's true protocols (the oracle): a restyled slice should be as hard as the real target texture, no
harder. CPU, one thread.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--structure", default="heart", help="restyle the source slices that hold this structure")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    from styleseg.eval.metrics import dice
    from styleseg.io.dataset import Dataset
    from styleseg.pipeline.config import load_experiment
    from styleseg.seg.predict import Predictor
    from styleseg.style.augment import generate_volume
    from styleseg.style.generator import load_generator
    from styleseg.style.train import train_generators

    torch.set_num_threads(1)
    run = args.run
    cfg = load_experiment(run / "experiment.toml").generator_config(seed=args.seed)
    src = Dataset(run / "data" / "source")
    oracle = Dataset(run / "data" / "oracle") if (run / "data" / "oracle" / "dataset.json").exists() else None
    pred = Predictor(run / "arms" / "reference" / "model", device="cpu")
    v0 = src.schema.value(args.structure)
    small = [(n, v) for n, v in src.schema.structures if n not in ("body", "lung_left", "lung_right")]
    cases = [r.case_id for r in src.labelled_cases(None) if args.structure in src.annotated(r.case_id)]
    order: list[str] = []  # the columns, in the order first met
    gens = {}
    for means in ("style", "source"):
        out = run / "bench_means" / f"{means}_seed{args.seed}"
        g = cfg.replace(source_means=means == "source")
        gens[means] = train_generators(src.root, run / "styles", out, g, resume=True, progress=False)
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for cid in cases:
        img = src.load_image(cid)
        lab = src.load_label(cid, img).array
        zs = np.flatnonzero((lab == v0).any(axis=(1, 2)))
        hu = np.asarray(img.array, np.float32)[zs]
        slices = {"source": hu}
        if oracle is not None:
            for rec in oracle.cases:
                if rec.extras.get("reimaged_from") == cid:
                    slices[str(rec.extras.get("protocol"))] = np.asarray(oracle.load_image(rec.case_id).array,
                                                                         np.float32)[zs]
        for means, folders in gens.items():
            for f in folders:
                model, _ = load_generator(f)
                slices[f"{means} means, {f.name}"] = generate_volume(model, lab[zs], hu, 0, seed=0).astype(np.float32)
        for col, x in slices.items():
            p = pred.predict_array(x, spacing=img.spacing[:2])
            for name, v in small:
                if name not in src.annotated(cid):
                    continue
                for k, z in enumerate(zs):
                    if (lab[z] == v).any():
                        scores[(col, name)].append(dice(p[k] == v, lab[z] == v))
            if col not in order:
                order.append(col)
    print(f"run {run}, seed-{args.seed} generators, the seed-0 reference U-Net; {len(cases)} source case(s), their "
          f"slices holding the {args.structure}; Dice, mean over slices (n)\n")
    print("| slices | " + " | ".join(n for n, _ in small) + " |")
    print("|---|" + "---|" * len(small))
    for col in order:
        cells = [f"{np.mean(scores[(col, n)]):.3f} ({len(scores[(col, n)])})" if scores[(col, n)] else "-"
                 for n, _ in small]
        print(f"| {col} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
