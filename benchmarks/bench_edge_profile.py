"""What do style generators do to the body outline? Mean HU against the distance to the outline, source vs generated.

For each source case of a finished experiment run folder (``RUN/data/source``, ``RUN/styles``), generators are
trained with the experiment's ``[generators]`` settings for each ``--lowpass`` choice (``source_lowpass``: how a
``source_skip`` generator low-passes the source that passes through), then every generator restyles evenly spaced
slices of the case. Printed per image: the mean HU in each 1-px ring at signed distance -4..+4 px from the label
map's body outline (negative inside; distance transform of ``label > 0``), and for the target cases
(``RUN/data/target``, labels from ``labelsRef``) the same profile of the re-imaged target itself. A generator that
keeps the anatomy keeps the source's profile: the outline is anatomy, not texture.

    python benchmarks/bench_edge_profile.py runs/real-ct-consistency-seeds examples/real-ct-consistency-seeds.toml \\
        --out /tmp/edge --lowpass gaussian segment --cases LUNG1-001 LUNG1-004 --target LUNG1-006
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

DISTANCES = range(-4, 5)


def _profile(vol: np.ndarray, dist: list[np.ndarray]) -> list[float]:
    """Mean of ``vol`` (z, y, x) in each ring of :data:`DISTANCES` (0: the outline itself, left out)."""
    out = []
    for k in DISTANCES:
        vals = [vol[i][np.abs(d - k) < 0.5] for i, d in enumerate(dist)] if k else []
        vals = [v for v in vals if v.size]
        out.append(float(np.concatenate(vals).mean()) if vals else float("nan"))
    return out


def _distances(label: np.ndarray) -> list[np.ndarray]:
    from scipy import ndimage as ndi

    return [np.where(b, -ndi.distance_transform_edt(b), ndi.distance_transform_edt(~b)) for b in label > 0]


def _slices(n: int, k: int = 10) -> np.ndarray:
    """``k`` evenly spaced slice indices, the first and last sixth left out (few body pixels there)."""
    return np.linspace(n // 6, n - 1 - n // 6, k).astype(int)


def _row(name: str, prof: list[float]) -> str:
    return f"| {name} | " + " | ".join(f"{v:+.0f}" for k, v in zip(DISTANCES, prof, strict=True) if k) + " |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished experiment run folder (data/source, styles)")
    ap.add_argument("experiment", type=Path, help="its experiment TOML ([generators] settings)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the generators trained here")
    ap.add_argument("--lowpass", nargs="+", default=["gaussian", "segment"], choices=["gaussian", "segment"])
    ap.add_argument("--cases", nargs="+", required=True, help="source case ids")
    ap.add_argument("--target", nargs="*", default=[], help="target case ids (profiles of the re-imaged target)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from styleseg.io.dataset import Dataset
    from styleseg.pipeline.config import load_experiment
    from styleseg.style.augment import find_generators, generate_volume
    from styleseg.style.generator import load_generator
    from styleseg.style.train import train_generators

    cfg = load_experiment(args.experiment)
    source = Dataset(args.run / "data" / "source")
    print("| image | " + " | ".join(f"{k:+d} px" for k in DISTANCES if k) + " |")
    print("|---|" + "---|" * (len(DISTANCES) - 1))
    gens: dict[str, list[Path]] = {}
    for lp in args.lowpass:
        g = cfg.generator_config(conditional=False, seed=args.seed)
        g = dataclasses.replace(g, arch=dataclasses.replace(g.arch, source_lowpass=lp))
        out = args.out / lp
        train_generators(args.run / "data" / "source", args.run / "styles", out, g, resume=True, progress=False)
        gens[lp] = find_generators(out)
    for case in args.cases:
        img, lab = source.load_image(case).array.astype(np.float32), source.load_label(case).array
        z = _slices(lab.shape[0])
        img, lab = img[z], lab[z]
        dist = _distances(lab)
        print(_row(f"{case} (source)", _profile(img, dist)))
        for lp, folders in gens.items():
            for folder in folders:
                model, _ = load_generator(folder)
                with torch.no_grad():
                    gen = generate_volume(model, lab, img, 0, seed=args.seed).astype(np.float32)
                print(_row(f"{case}, {folder.name}, {lp}", _profile(gen, dist)))
    if args.target:
        target = Dataset(args.run / "data" / "target")
        for rec in target.labelled_cases("labelsRef"):
            if not rec.case_id.startswith(tuple(args.target)):
                continue
            img, lab = target.load_image(rec.case_id).array.astype(np.float32), target.load_label(rec.case_id).array
            z = _slices(lab.shape[0])
            print(_row(f"{rec.case_id} (target)",
                       _profile(img[z], _distances(lab[z]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
