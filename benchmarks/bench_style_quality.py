"""Must-show 1 and 3 of the style generators on the built-in phantom benchmark (small CPU version).

    .venv/bin/python benchmarks/bench_style_quality.py --out /tmp/bsq --steps 100

1. texture: NPS distance (generated, style) vs NPS distance (source, style) for every style
   (radial NPS of 16 px high-pass ROIs inside body/heart, ``sim.nps.nps_distance``, log10 decades); target
   is a ratio <= 1/3;
2. anatomy: mean HU per structure of the generated slices vs the style slice (target: within 30 HU);
3. separate (n generators) vs one conditional generator: the same measures and the training time.

Styles: one target slice per target protocol (the middle slice of the first case of each protocol, its
label map from labelsRef). Generated slices: the middle slice of each source case. The Dice check of
must-show 1 (a segmenter trained on target slices) is not part of this script yet.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from styleseg.io.dataset import Dataset
from styleseg.sim.benchmark import BenchmarkConfig, make_benchmark
from styleseg.sim.nps import RadialNPS, nps_2d, nps_distance, radial_nps
from styleseg.style.augment import generate_volume, style_grid_figure
from styleseg.style.generator import load_generator
from styleseg.style.styleset import StyleSet, StyleSlice, slice_volume
from styleseg.style.train import GeneratorConfig, train_generators


def build_styles(target: Path, out: Path) -> StyleSet:
    ds = Dataset(target)
    seen, styles = set(), []
    for rec in ds.cases:
        prot = rec.extras.get("protocol")
        if prot in seen:
            continue
        seen.add(prot)
        img, lab = ds.load_image(rec.case_id), ds.load_label(rec.case_id)
        k = img.shape[0] // 2
        styles.append(StyleSlice(len(styles), rec.case_id, k, slice_volume(img, k), slice_volume(lab, k),
                                 "dataset:labelsRef", 1, {"protocol": prot}, f"protocol {prot}"))
    ss = StyleSet(str(target), ds.schema, "manual", styles)
    ss.save(out)
    return ss


def tissue_nps(hu: np.ndarray, lab: np.ndarray, spacing: float, roi: int = 16) -> RadialNPS:
    """Radial NPS of the high-pass residual (hu - Gaussian(2 px)) in ROIs fully inside soft tissue (body,
    heart: labels 3 and 6, eroded), so the anatomy of the label map does not enter the texture measure."""
    from scipy import ndimage as ndi

    resid = hu - ndi.gaussian_filter(hu.astype(np.float64), 2.0)
    m = ndi.binary_erosion(np.isin(lab, (3, 6)), iterations=2)
    rois = [resid[i:i + roi, j:j + roi] for i in range(0, hu.shape[0] - roi, roi // 2)
            for j in range(0, hu.shape[1] - roi, roi // 2) if m[i:i + roi, j:j + roi].all()]
    if not rois:
        raise ValueError("no soft-tissue ROI")
    nps2d, f = nps_2d(np.stack(rois), spacing, "mean")
    return radial_nps(nps2d, f, len(rois))


def measure(gen_folders: list[Path], ss: StyleSet, source: Path, spacing: float) -> list[dict]:
    ds = Dataset(source)
    srcs = []
    for rec in ds.labelled_cases():
        img, lab = ds.load_image(rec.case_id), ds.load_label(rec.case_id)
        k = img.shape[0] // 2
        srcs.append((np.asarray(img.array[k], np.float32), np.asarray(lab.array[k])))
    rows = []
    for gp in gen_folders:
        model, meta = load_generator(gp)
        for k, rec in enumerate(meta["styles"]):
            st = next(s for s in ss.styles if s.index == rec["index"])
            n_style = tissue_nps(st.hu, st.label_map, spacing)
            d_src, d_gen, dhu = [], [], {}
            for i, (hu, lab) in enumerate(srcs):
                g = generate_volume(model, lab[None], hu[None], k, seed=i)[0].astype(np.float32)
                d_src.append(nps_distance(tissue_nps(hu, lab, spacing), n_style))
                d_gen.append(nps_distance(tissue_nps(g, lab, spacing), n_style))
                for name, v in ss.schema.structures:
                    if (lab == v).sum() > 50 and (st.label_map == v).sum() > 50:
                        dhu.setdefault(name, []).append(float(g[lab == v].mean() - st.hu[st.label_map == v].mean()))
            rows.append({"generator": gp.name, "style": rec["index"], "protocol": st.tags.get("protocol"),
                         "nps_dist_source": float(np.mean(d_src)), "nps_dist_gen": float(np.mean(d_gen)),
                         "ratio": float(np.mean(d_gen) / max(np.mean(d_src), 1e-9)),
                         "max_abs_mean_hu_diff": max(abs(float(np.mean(v))) for v in dhu.values()),
                         "mean_hu_diff": {n: round(float(np.mean(v)), 1) for n, v in dhu.items()},
                         "train_s": meta.get("train_seconds_last_run")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--figure", type=Path, default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    bench = a.out / "bench"
    if not bench.exists():
        make_benchmark(bench, config=BenchmarkConfig(n_source=3, n_target=3, source_slices=3, target_slices=3,
                                                     size=a.size))
    source, target = bench / "source", bench / "target"
    if not (a.out / "styles" / "styles.json").exists():
        build_styles(target, a.out / "styles")
    ss = StyleSet.load(a.out / "styles")
    spacing = float(Dataset(source).load_image(Dataset(source).cases[0].case_id).spacing[0])
    cfg = replace(GeneratorConfig.preset("quick"), steps=a.steps)
    t0 = time.perf_counter()
    sep = train_generators(source, a.out / "styles", a.out / "gen_sep", cfg, resume=True, progress=False)
    t_sep = time.perf_counter() - t0
    t0 = time.perf_counter()
    cond = train_generators(source, a.out / "styles", a.out / "gen_cond", replace(cfg, conditional=True),
                            resume=True, progress=False)
    t_cond = time.perf_counter() - t0
    rows = measure(sep, ss, source, spacing) + measure(cond, ss, source, spacing)
    print(f"training wall time: separate {t_sep:.0f} s ({len(sep)} generators x {a.steps} steps), "
          f"conditional {t_cond:.0f} s ({2 * a.steps} steps)")
    print("| generator | style | protocol | NPS dist source-style | NPS dist gen-style | ratio (<= 0.33) | "
          "max |mean HU diff| (<= 30) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['generator']} | {r['style']} | {r['protocol']} | {r['nps_dist_source']:.3f} | "
              f"{r['nps_dist_gen']:.3f} | {r['ratio']:.2f} | {r['max_abs_mean_hu_diff']:.0f} |")
    (a.out / "results.json").write_text(json.dumps({"rows": rows, "t_sep": t_sep, "t_cond": t_cond}, indent=1))
    if a.figure:
        ds = Dataset(source)
        labs, hus = [], []
        for rec in ds.labelled_cases()[:3]:
            img, lab = ds.load_image(rec.case_id), ds.load_label(rec.case_id)
            labs.append(np.asarray(lab.array[img.shape[0] // 2]))
            hus.append(np.asarray(img.array[img.shape[0] // 2], np.float32))
        style_grid_figure(a.out / "styles", a.out / "gen_sep", labs, a.figure, sources=hus)
        print(f"figure: {a.figure}")


if __name__ == "__main__":
    main()
