"""Figures of the style stage: a generator's loss curves, the paper's Fig. 2 (style slices x label maps) and the
contact sheet of automatically chosen style slices."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from styleseg.style.augment import find_generators, generate_volume
from styleseg.style.styleset import StyleSet
from styleseg.style.tags import WHY_KEYS, distinguishing_keys


def plot_losses(log_path: Path, out: Path) -> Path:
    """Content, style and mean-HU losses against the step (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from styleseg.io.atomic import atomic_path

    rows = [json.loads(x) for x in Path(log_path).read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    steps = [r["step"] for r in rows]
    for key in ("content", "style", "mean_hu", "nps", "loss"):
        if any(key in r for r in rows) and any(r.get(key, 0) > 0 for r in rows):
            ax.plot(steps, [max(r.get(key, 0.0), 1e-12) for r in rows], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(Path(log_path).parent.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out



def style_grid_figure(styles: str | Path, generators: Sequence[str | Path] | str | Path,
                      labels: Sequence[np.ndarray], out: str | Path, seed: int = 0,
                      sources: Sequence[np.ndarray] | None = None, window: tuple[float, float] = (40.0, 400.0)) -> Path:
    """The paper's Fig. 2: style slices across the top, label maps down the side, generated slices in the grid
    (soft-tissue window). ``labels``: 2D label maps (source slices); ``sources``: their HU (for image_input
    generators)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from styleseg.data.slices import window as win
    from styleseg.io.atomic import atomic_path
    from styleseg.runs import choose_device
    from styleseg.style.generator import load_generator

    ss = StyleSet.load(styles)
    by_index = {s.index: s for s in ss.styles}
    cols = []
    for gp in find_generators(generators):
        model, meta = load_generator(gp, choose_device("cpu"))
        for k, rec in enumerate(meta.get("styles", [])):
            cols.append((model, k, by_index.get(int(rec["index"]))))
    nr, nc = len(labels), len(cols)
    fig, axes = plt.subplots(nr + 1, nc + 1, figsize=(1.8 * (nc + 1), 1.8 * (nr + 1)), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    cmap = plt.get_cmap("tab10")
    for j, (_, _, st) in enumerate(cols):
        if st is not None:
            axes[0, j + 1].imshow(win(st.hu, *window), cmap="gray", vmin=0, vmax=1)
            axes[0, j + 1].set_title(f"style {st.index}\n{st.case_id}:{st.slice}", fontsize=7)
    for i, lab in enumerate(labels):
        axes[i + 1, 0].imshow(np.asarray(lab), cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
        for j, (model, k, _) in enumerate(cols):
            img = None if sources is None else np.asarray(sources[i])[None]
            hu = generate_volume(model, np.asarray(lab)[None], img, k, seed=seed + i)[0]
            axes[i + 1, j + 1].imshow(win(hu, *window), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].text(0.5, 0.5, "label map \u2193\nstyle \u2192", ha="center", va="center", fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(out)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)


def contact_sheet(sset: StyleSet, pts: np.ndarray | None = None, labels: np.ndarray | None = None,
                  med: np.ndarray | None = None, zoom: int = 96) -> bytes:
    """PNG bytes: per style, the slice in the soft-tissue window (title: case, slice, cluster size and the
    tags that differ between candidates) above a ``zoom`` px crop at native resolution around the body
    centre (texture is invisible at thumbnail scale); in automatic mode a scatter of all candidates on
    the first two principal components, coloured by cluster, medoids starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from styleseg.data.slices import window
    from styleseg.labels import derive_body
    from styleseg.style.descriptors import central_crop

    n = len(sset.styles)
    scatter = pts is not None and labels is not None and med is not None
    cols = n + (2 if scatter else 0)
    fig = plt.figure(figsize=(2.3 * cols, 5.4))
    grid = fig.add_gridspec(2, cols)
    cmap = plt.get_cmap("tab10")
    keys = distinguishing_keys([s.tags for s in sset.styles]) or [k for k in WHY_KEYS if k in
                                                                  (sset.styles[0].tags if n else {})][:2]
    for i, s in enumerate(sset.styles):
        img = window(s.hu, 40.0, 400.0)
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        tags = "\n".join(f"{k}={str(s.tags[k])[:18]}" for k in keys if k in s.tags)
        ax.set_title(f"style {s.index}: {s.case_id[:16]} z={s.slice}\ncluster of {s.cluster_size}"
                     + (f"\n{tags}" if tags else ""), fontsize=7, color=cmap(i % 10))
        ax.axis("off")
        body = derive_body(s.hu)
        ys, xs = np.nonzero(body)
        c = (int(ys.mean()), int(xs.mean())) if len(ys) else (img.shape[0] // 2, img.shape[1] // 2)
        sy, sx = central_crop(img, c, zoom)
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(img[sy, sx], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{zoom} px at native spacing", fontsize=6)
        ax.axis("off")
    if scatter:
        ax = fig.add_subplot(grid[:, n:])
        sizes = np.bincount(labels, minlength=len(med))
        order = sorted(range(len(med)), key=lambda i: (-sizes[i], int(med[i])))
        y = pts[:, 1] if pts.shape[1] > 1 else np.zeros(len(pts))
        for idx, ci in enumerate(order):
            sel = labels == ci
            ax.scatter(pts[sel, 0], y[sel], s=14, color=cmap(idx % 10), label=f"style {idx} ({int(sizes[ci])})")
            ax.scatter(pts[med[ci], 0], y[med[ci]], s=140, marker="*", color=cmap(idx % 10), edgecolor="k")
        ax.set_xlabel("PC1", fontsize=8)
        ax.set_ylabel("PC2", fontsize=8)
        ax.set_title("all candidates (star: medoid)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(f"{Path(sset.dataset).name}: {sset.method}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
