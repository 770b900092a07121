"""Figures of the style stage: a generator's loss curves and the paper's Fig. 2 (style slices x label maps)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from styleseg.style.augment import find_generators, generate_volume


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
    from styleseg.style.styleset import StyleSet

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
