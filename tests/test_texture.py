"""NPS estimators, texture descriptor and NPS distance."""

from __future__ import annotations

import numpy as np
import pytest

from styleseg import texture as nps
from styleseg.sim.phantom import PhantomConfig, make_phantom
from styleseg.sim.scanner import reimage


def test_white_noise_nps_is_flat_sigma2_dx2_and_integrates_to_variance():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 10.0, (256, 256))
    r = nps.noise_nps(w, 0.5, roi=64, detrend="mean")
    assert r.nps[2:].mean() == pytest.approx(100 * 0.25, rel=0.05)
    assert r.std == pytest.approx(10.0, rel=0.03)


def test_difference_of_realisations_cancels_the_object():
    rng = np.random.default_rng(2)
    obj = np.zeros((128, 128))
    obj[30:90, 20:100] = 500.0
    a, b = obj + rng.normal(0, 5, obj.shape), obj + rng.normal(0, 5, obj.shape)
    assert nps.nps_from_difference(a, b, 1.0, roi=32).std == pytest.approx(5.0, rel=0.05)


def test_nps_distance_properties():
    f = np.linspace(0, 0.5, 20)
    mk = lambda v: nps.RadialNPS(f, v, 1.0, 0.2, 0.2)  # noqa: E731
    a, b, c = mk(np.full(20, 10.0)), mk(np.full(20, 100.0)), mk(np.full(20, 1000.0))
    assert nps.nps_distance(a, a) == 0.0
    assert nps.nps_distance(a, b) == pytest.approx(1.0)  # one decade everywhere
    assert nps.nps_distance(a, b) == nps.nps_distance(b, a)
    assert nps.nps_distance(a, c) == pytest.approx(2.0)


@pytest.fixture(scope="module")
def slices():
    img, lab = make_phantom(2, PhantomConfig(size=320, n_slices=3))
    x, sp = img.array[1], img.spacing[0]
    runs = {"standard": ("standard", 1), "standard2": ("standard", 2), "low-dose-sharp": ("low-dose-sharp", 3),
            "low-dose-smooth": ("low-dose-smooth", 4)}
    return {k: reimage(x, sp, p, s) for k, (p, s) in runs.items()}, sp


def test_slice_nps_on_anatomy_orders_protocols(slices):
    s, sp = slices
    std = {k: nps.slice_nps(v, sp).std for k, v in s.items()}
    peak = {k: nps.slice_nps(v, sp).mean_freq for k, v in s.items()}
    assert std["low-dose-sharp"] > 2 * std["standard"]
    assert peak["low-dose-sharp"] > peak["standard"] > peak["low-dose-smooth"]


def test_texture_descriptor_and_distance_separate_protocols(slices):
    s, sp = slices
    d = {k: nps.texture_descriptor(v) for k, v in s.items()}
    assert d["standard"].shape == (3 + nps.N_DESCRIPTOR_BINS,)
    same = np.linalg.norm(d["standard"] - d["standard2"])
    assert np.linalg.norm(d["standard"] - d["low-dose-sharp"]) > 3 * same
    r = {k: nps.slice_nps(v, sp) for k, v in s.items()}
    assert nps.nps_distance(r["standard"], r["low-dose-sharp"]) > 3 * nps.nps_distance(r["standard"], r["standard2"])
