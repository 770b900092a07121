"""Speed of the scanner simulator and build time of the quick benchmark (issue 3, "must show" 4).

Usage: .venv/bin/python benchmarks/bench_scanner.py [--threads 2] [--skip-build] [--figures docs/figures]
Prints a table: seconds per 512 x 512 slice (720 views, full chain: projection, Poisson + electronic
noise, log, FBP) for batches of 1 and 8, and the wall time of `make_benchmark(preset="quick")`.
With --figures it also prints the per-protocol noise table and writes docs/figures/sim_protocols.png
(a phantom slice and a real ../shared/data/nsclc slice under every protocol) and sim_nps.png.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--figures", type=Path, default=None)
    args = ap.parse_args()
    os.sched_setaffinity(0, set(range(args.threads)))

    import numpy as np

    from styleseg.sim.phantom import PhantomConfig, make_phantom
    from styleseg.sim.scanner import reimage

    img, _ = make_phantom(0, PhantomConfig(size=512, n_slices=8))
    rows = []
    reimage(img.array[:1], img.spacing[0], "standard", 0)  # warm-up (plans, caches)
    for batch in (1, 8):
        for prot in ("standard", "ultra-low-dose-lung"):
            x = img.array[:batch]
            times = []
            for rep in range(3):
                t = time.perf_counter()
                reimage(x, img.spacing[0], prot, rep)
                times.append(time.perf_counter() - t)
            rows.append((f"reimage 512x512, 720 views, batch {batch}, {prot}", min(times) / batch, "s/slice"))
    if not args.skip_build:
        from styleseg.sim.benchmark import make_benchmark

        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            make_benchmark(Path(d) / "bench", "quick", 0)
            rows.append(("make_benchmark quick (10 src x 8 + 12 tgt x 6 slices, 320x320)",
                         time.perf_counter() - t, "s"))
    print(f"{'what':70s} {'value':>10s}  unit   (cores: {args.threads}, numpy {np.__version__})")
    for what, v, unit in rows:
        print(f"{what:70s} {v:10.3f}  {unit}")
    if args.figures is not None:
        figures(args.figures)


NSCLC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nsclc" / "LUNG1-004_ct.nii.gz"


def figures(out: Path) -> None:
    """Protocol gallery (phantom + real slice) and NPS curves; prints the per-protocol noise table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from styleseg import texture as nps
    from styleseg.io.volume import read_nifti
    from styleseg.sim.phantom import PhantomConfig, make_phantom
    from styleseg.sim.scanner import PROTOCOLS, reimage

    out.mkdir(parents=True, exist_ok=True)
    img, lab = make_phantom(4, PhantomConfig(size=512, n_slices=5))
    sp = img.spacing[0]
    stack = img.array[1:4]
    tissue = ((lab.array[1:4] >= 3) & (np.abs(stack) < 300))  # heart, oesophagus, cord, body: no lung/air
    crop = (slice(80, 432), slice(40, 472))
    real = None
    if NSCLC.exists():
        v = read_nifti(NSCLC)
        real, rsp = v.array[v.shape[0] // 2].astype(np.float32), v.spacing[0]
    names = list(PROTOCOLS)
    fig, ax = plt.subplots(2 if real is not None else 1, len(names), figsize=(2.6 * len(names), 4.6),
                           squeeze=False)
    curves = {}
    print(f"\n{'protocol':26s} {'dose':>5s} {'kernel':>8s} {'phantom std':>11s} {'mean f':>7s} {'peak f':>7s} "
          f"{'NPS dist':>8s} {'nsclc std':>9s}")
    for j, name in enumerate(names):
        a, b = reimage(stack, sp, name, 1), reimage(stack, sp, name, 2)
        r = nps.nps_from_difference(a, b, sp, roi=32, mask=tissue)
        curves[name] = r
        ax[0, j].imshow(np.clip((a[1][crop] + 160) / 400, 0, 1), cmap="gray")
        ax[0, j].set_title(f"{name}\n{PROTOCOLS[name].dose_fraction:g} dose, {PROTOCOLS[name].kernel}", fontsize=10)
        real_std = float("nan")
        if real is not None:
            y = reimage(real, rsp, name, 3, noise_free_input=False)
            real_std = nps.slice_nps(y, rsp).std
            ax[1, j].imshow(np.clip((y[crop] + 160) / 400, 0, 1), cmap="gray")
        dist = nps.nps_distance(r, curves["standard"])
        print(f"{name:26s} {PROTOCOLS[name].dose_fraction:5.2f} {PROTOCOLS[name].kernel:>8s} {r.std:11.1f} "
              f"{r.mean_freq:7.3f} {r.peak_freq:7.3f} {dist:8.2f} {real_std:9.1f}")
    for a_ in ax.ravel():
        a_.axis("off")
    ax[0, 0].text(-10, 176, "phantom", rotation=90, va="center", ha="right", fontsize=10)
    if real is not None:
        ax[1, 0].text(-10, 176, "NSCLC LUNG1-004", rotation=90, va="center", ha="right", fontsize=10)
    fig.suptitle("Benchmark protocols (window W400/L40); bottom: a real NSCLC-Radiomics slice re-imaged", fontsize=12)
    fig.tight_layout()
    fig.savefig(out / "sim_protocols.png", dpi=80)
    plt.close(fig)
    fig, axn = plt.subplots(figsize=(6.5, 4.2))
    for name, r in curves.items():
        axn.semilogy(r.freq[1:], r.nps[1:], label=f"{name} ({r.std:.0f} HU)")
    axn.set_xlabel("spatial frequency (cycles/mm)")
    axn.set_ylabel("NPS (HU$^2$ mm$^2$)")
    axn.set_title("Radial NPS in soft tissue of the phantom (difference of two scans)")
    axn.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sim_nps.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
