"""Geometric training augmentation (data/transforms.py): the fast paths draw and compute what the plain ones do."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from styleseg.data.transforms import (
    ForegroundIndex,
    TrainAugment,
    TrainAugmentConfig,
    _zoom_basis,
    sample_crop_centre,
)


def test_the_elastic_basis_is_the_cubic_spline_zoom():
    rng = np.random.default_rng(0)
    grid = rng.normal(0, 6.0, (5, 5))
    want = ndi.zoom(grid, 160 / 5, order=3)[:160, :160]
    got = np.tensordot(grid, _zoom_basis(5, 160), 2)
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_a_kept_foreground_index_gives_the_same_crop_centres():
    lab = np.zeros((64, 64), np.uint8)
    lab[5:9, 40:50] = 4  # a small organ
    lab[20:50, 10:30] = 1
    fg = np.array([1, 3, 4, 5])
    index = ForegroundIndex(lab, fg)
    assert index.present() == [1, 4]
    for seed in range(20):
        a = sample_crop_centre(np.random.default_rng(seed), lab, 32, fg, 0.6)
        b = sample_crop_centre(np.random.default_rng(seed), lab, 32, fg, 0.6, index)
        assert a == b
    # and whole augmented crops are identical with and without it
    aug = TrainAugment(TrainAugmentConfig(crop=32), tuple(fg))
    hu = np.random.default_rng(1).normal(0, 50, (64, 64)).astype(np.float32)
    for seed in range(5):
        x1, y1 = aug(hu, lab, np.random.default_rng(seed))
        x2, y2 = aug(hu, lab, np.random.default_rng(seed), fg=index)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
