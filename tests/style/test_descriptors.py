"""Texture descriptors and the clustering of style selection (style/descriptors.py), with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from styleseg.style.descriptors import kmedoids, region_descriptor, standardise_blocks


def test_kmedoids_hand_example() -> None:
    # two tight groups on a line: medoids are the middle points of each group
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0], [13.0]])
    med, lab, cost = kmedoids(x, 2, seed=0)
    assert sorted(x[med, 0].tolist()) in ([1.0, 11.0], [1.0, 12.0])
    assert lab.tolist()[:3] == [lab[0]] * 3 and len(set(lab[3:])) == 1 and lab[0] != lab[3]
    assert cost == pytest.approx(2.0 + (1 + 0 + 1 + 2))
    med1, lab1, cost1 = kmedoids(x, 1)
    assert x[med1[0], 0] == 10.0 and cost1 == pytest.approx(10 + 9 + 8 + 0 + 1 + 2 + 3)
    with pytest.raises(ValueError):
        kmedoids(x, 8)


def test_standardise_blocks_equal_weight_and_nan() -> None:
    a = np.array([[1.0, np.nan], [3.0, 5.0]])
    b = np.array([[0.0, 0.0, 0.0, 2.0], [4.0, 4.0, 4.0, 2.0]])
    z = standardise_blocks([a, b])
    # z-scores are +-1; block a divided by sqrt(2), block b by 2; NaN and constant columns -> 0
    np.testing.assert_allclose(z[0], [-1 / np.sqrt(2), 0.0, -0.5, -0.5, -0.5, 0.0])
    np.testing.assert_allclose(z[1], [1 / np.sqrt(2), 0.0, 0.5, 0.5, 0.5, 0.0])


def test_region_descriptor_white_noise_level_and_shape() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 20, (128, 128))
    region = np.ones_like(hu, bool)
    f = region_descriptor(hu, region, r=32)
    # detrending removes 6 of 1024 degrees of freedom, the lower-half selection biases std down a little
    assert 17.0 < 10 ** f[0] < 20.5
    # white noise (per pixel): a flat radial NPS at sigma^2 = 400 HU^2 px^2, so log10 ~ 2.6 everywhere
    np.testing.assert_allclose(f[3:], np.log10(400.0), atol=0.25)
    smooth = region_descriptor(ndi.gaussian_filter(hu, 2.0), region, r=32)
    assert smooth[1] < 0.5 * f[1]  # mean frequency drops for a smoothed texture
    assert smooth[-1] < f[-1] - 2  # and the high-frequency NPS falls by orders of magnitude
    assert np.isnan(region_descriptor(hu, np.zeros_like(region))).all()
