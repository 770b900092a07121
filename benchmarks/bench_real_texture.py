"""Did the generators of a finished run give the augmented slices their style's texture? (real CT, issue 4)

For every style k of a run folder (``styleseg run``): the radial NPS of the style slice, of source slices and
of their generated versions (``CASE_sKK`` in the augmented dataset), all from the same estimator as the texture
goal of the phantom benchmark (``texture.slice_nps``: high-pass-detrended near-uniform soft-tissue ROIs inside
the label map). Prints the style's and the generated slices' noise std and the median texture ratio
``d(generated, style) / d(source, style)`` (``texture.nps_distance``; the phantom goal is <= 1/3), and how far
the generated slice's anatomy strays from the source's: the RMS difference of the two after a Gaussian low-pass
(sigma 2 px, which removes most of the noise) inside the label map, in HU, with lung and soft tissue clipped to
the soft-tissue window W400/L40 so that the lungs' absolute level does not dominate.

    .venv/bin/python benchmarks/bench_real_texture.py runs/real-ct-img runs/real-ct-skip
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from styleseg.io.dataset import Dataset
from styleseg.style.styleset import StyleSet
from styleseg.texture import nps_distance, slice_nps


def measure(run: Path, per_case: int, aug_name: str) -> None:
    ss = StyleSet.load(run / "styles")
    style_nps = {s.index: slice_nps(s.hu.astype(np.float64), s.image.spacing[0], s.label_map > 0) for s in ss.styles}
    aug = Dataset(run / "data" / aug_name)
    ids = [r.case_id for r in aug]
    sources = [c for c in ids if not any(c.startswith(o) and o != c for o in ids) and f"{c}_s00" in ids]
    ratios: dict[int, list[float]] = {k: [] for k in style_nps}
    stds: dict[int, list[float]] = {k: [] for k in style_nps}
    src_std: list[float] = []
    drift: dict[int, list[float]] = {k: [] for k in style_nps}

    def low(x: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(np.clip(x.astype(np.float64), -160, 240), 2.0)

    for c in sources:
        src = aug.load_image(c)
        lab = aug.load_label(c, src).array
        zs = [z for z in range(lab.shape[0]) if (lab[z] > 0).sum() > 1000]
        zs = zs[len(zs) // 4::max(1, len(zs) // (per_case + 1))][:per_case]
        gens = {k: aug.load_image(f"{c}_s{k:02d}").array for k in style_nps}
        for z in zs:
            try:
                ns = slice_nps(src.array[z].astype(np.float64), src.spacing[0], lab[z] > 0)
            except ValueError:
                continue
            src_std.append(ns.std)
            inside = lab[z] > 0
            for k, g in gens.items():
                drift[k].append(float(np.sqrt(np.mean((low(g[z]) - low(src.array[z]))[inside] ** 2))))
                try:
                    ng = slice_nps(g[z].astype(np.float64), src.spacing[0], lab[z] > 0)
                except ValueError:
                    continue
                ratios[k].append(nps_distance(ng, style_nps[k]) / max(nps_distance(ns, style_nps[k]), 1e-9))
                stds[k].append(ng.std)
    print(f"\n{run} ({aug_name}; {len(sources)} source cases, {len(src_std)} slices; source noise std "
          f"{np.mean(src_std):.1f} HU)")
    print("| style | style noise std (HU) | generated noise std (HU) | median d(gen, style) / d(source, style) "
          "| low-pass RMS difference to the source (HU) |")
    print("|---|---|---|---|---|")
    for k in style_nps:
        print(f"| {k} | {style_nps[k].std:.1f} | {np.mean(stds[k]):.1f} | {np.median(ratios[k]):.2f} "
              f"| {np.mean(drift[k]):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--per-case", type=int, default=5, help="slices per source case")
    ap.add_argument("--aug", default="aug_separate", help="augmented dataset under RUN/data")
    a = ap.parse_args()
    for run in a.runs:
        measure(run, a.per_case, a.aug)


if __name__ == "__main__":
    main()
