"""Issue 14: does a style generator keep each structure visible? A model that segments the source segments the
restyled slices of the augmented set as well as the source slices, per structure, if the structure survives.

    .venv/bin/python benchmarks/bench_restyled_structures.py RUN [--model reference] [--aug aug_separate]

RUN: a run folder of ``styleseg run`` (e.g. ``make demo``'s) with ``arms/<model>/model`` and
``data/<aug>`` (the augmented dataset: ``<case>`` source slices and ``<case>_sNN`` restyled by style NN; or
``--aug oracle``: the source re-imaged with the target's true protocols, one column per protocol, what a restyled
slice should be as hard as).
For each structure and each style (``source``: the unrestyled slices), over every labelled slice:

* **Dice** of the model's prediction against the label the slice was generated from (the model is one trained
  on source texture, with position channels in ``make demo``: the reference arm);
* **contrast**: the structure's mean HU minus the mean HU of a ring 2-4 px around it (what tells it from its
  surroundings), and its **noise** (HU standard deviation inside it).

A structure whose Dice and contrast collapse on restyled slices only is one the generator erased; a U-Net
trained on those slices with that label learns to call the texture around it the structure, or nothing.
The same contrast and noise are printed for the style slices (``RUN/styles``) the generators learned from.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def ring(mask: np.ndarray, inner: int = 2, outer: int = 4) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=outer) & ~binary_dilation(mask, iterations=inner)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--model", default="reference", help="the arm whose model segments the slices")
    ap.add_argument("--aug", default="aug_separate", help="the augmented dataset under RUN/data")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from styleseg.eval.metrics import dice
    from styleseg.io.dataset import Dataset
    from styleseg.seg.predict import Predictor

    torch.set_num_threads(args.threads)
    ds = Dataset(args.run / "data" / args.aug)
    pred = Predictor(args.run / "arms" / args.model / "model", device="cpu", dtype="bfloat16", channels_last=True)
    structures = [(n, v) for n, v in ds.schema.structures if n != "body"]
    dices: dict[tuple[str, str], list[float]] = defaultdict(list)
    contrast: dict[tuple[str, str], list[float]] = defaultdict(list)
    noise: dict[tuple[str, str], list[float]] = defaultdict(list)
    styles: set[str] = set()
    for rec in ds.labelled_cases(None):
        m = re.search(r"_s(\d+)$", rec.case_id)
        style = f"style {int(m.group(1))}" if m else str(rec.extras.get("protocol") or "source")
        styles.add(style)
        img = ds.load_image(rec.case_id)
        lab = ds.load_label(rec.case_id, img).array
        hu = np.asarray(img.array, np.float32)
        out = pred.predict_array(hu, spacing=img.spacing[:2])
        for name, v in structures:
            if name not in ds.annotated(rec.case_id):
                continue
            for k in range(lab.shape[0]):
                ref = lab[k] == v
                if not ref.any():
                    continue
                dices[(name, style)].append(dice(out[k] == v, ref))
                r = ring(ref)
                contrast[(name, style)].append(float(hu[k][ref].mean() - hu[k][r].mean()))
                noise[(name, style)].append(float(hu[k][ref].std()))
    order = ["source"] + sorted(s for s in styles if s != "source")
    print(f"run {args.run}, model {args.model}, dataset {args.aug} ({len(ds)} cases); per structure: "
          f"mean over labelled slices (n)\n")
    print("| structure | " + " | ".join(order) + " |")
    print("|---|" + "---|" * len(order))
    for name, _ in structures:
        cells = []
        for s in order:
            d, c, z = dices[(name, s)], contrast[(name, s)], noise[(name, s)]
            cells.append(f"Dice {np.mean(d):.3f}, contrast {np.mean(c):+.0f} HU, sd {np.mean(z):.0f} (n={len(d)})"
                         if d else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    style_slices(args.run / "styles", structures)
    return 0


def style_slices(folder: Path, structures: list[tuple[str, int]]) -> None:
    """Contrast and noise of each structure in the style slices of ``folder`` (styles.json)."""
    import json

    from styleseg.io.volume import read_nifti

    if not (folder / "styles.json").exists():
        return
    styles = json.loads((folder / "styles.json").read_text())["styles"]
    print("\nthe style slices: contrast / noise sd (HU)\n")
    print("| style | protocol | " + " | ".join(n for n, _ in structures) + " |")
    print("|---|---|" + "---|" * len(structures))
    for st in styles:
        hu = np.asarray(read_nifti(folder / st["image"]).array, np.float32)
        lab = np.asarray(read_nifti(folder / st["label"]).array)
        cells = []
        for _, v in structures:
            ok = [k for k in range(lab.shape[0]) if (lab[k] == v).sum() >= 5]
            c = [hu[k][lab[k] == v].mean() - hu[k][ring(lab[k] == v)].mean() for k in ok]
            z = [hu[k][lab[k] == v].std() for k in ok]
            cells.append(f"{np.mean(c):+.0f} / {np.mean(z):.0f}" if ok else "-")
        print(f"| {st['index']} | {st.get('tags', {}).get('protocol', '')} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
