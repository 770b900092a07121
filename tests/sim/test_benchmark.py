"""make-benchmark and simulate: layout, label roles, protocol records, bad input, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from styleseg.cli import app
from styleseg.errors import ConfigError, InputError
from styleseg.io.dataset import Dataset
from styleseg.sim.benchmark import BenchmarkConfig, make_benchmark, simulate_dataset

TINY = BenchmarkConfig(n_source=2, n_target=3, source_slices=2, target_slices=2, size=128,
                       target_protocols=("low-dose-sharp", "ultra-low-dose-lung", "low-dose-smooth"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bench"
    return make_benchmark(out, "quick", seed=3, config=TINY)


def test_benchmark_layout_and_roles(bench):
    src, tgt = Dataset(bench[0]), Dataset(bench[1])
    assert len(src) == 2 and len(tgt) == 3
    assert [c.labels for c in src] == ["labelsTr"] * 2
    assert [c.labels for c in tgt] == ["labelsRef"] * 3  # target labels: evaluation only
    assert not (bench[1] / "labelsTr").exists()
    assert [c.extras["protocol"] for c in tgt] == list(TINY.target_protocols)
    assert {c.extras["protocol"] for c in src} == {"standard"}
    assert set(src.case("src_000").annotated) == set(src.schema.names)
    img = tgt.load_image("tgt_000")
    lab = tgt.load_label("tgt_000", img)
    assert img.array.dtype == np.int16 and img.shape == lab.shape == (2, 128, 128)
    # source and target patients are different people
    seeds_s = {c.extras["phantom_seed"] for c in src}
    assert seeds_s.isdisjoint({c.extras["phantom_seed"] for c in tgt})
    assert src.meta["phantom"] is True and tgt.meta["domain"] == "target"


def test_benchmark_is_deterministic_and_refuses_existing_out(bench, tmp_path):
    again = make_benchmark(tmp_path / "again", "quick", seed=3, config=TINY)
    a, b = Dataset(bench[0]), Dataset(again[0])
    assert np.array_equal(a.load_image("src_001").array, b.load_image("src_001").array)
    with pytest.raises(InputError, match="already exists"):
        make_benchmark(tmp_path / "again", "quick", config=TINY)


def test_simulate_keeps_labels_and_records_protocol(bench, tmp_path):
    out = simulate_dataset(bench[1], tmp_path / "sim", dose_fraction=0.1, kernel="sharp", seed=1)
    ds, orig = Dataset(out), Dataset(bench[1])
    assert ds.meta["simulated"]["protocol"]["kernel"] == "sharp"
    assert ds.meta["simulated"]["noise_free_input"] is True  # phantom dataset -> full simulation
    for c in orig:
        rec = ds.case(c.case_id)
        assert rec.labels == c.labels and rec.extras["protocol"] == "dose0.1-sharp"
        assert rec.extras["phantom_seed"] == c.extras["phantom_seed"]
        assert np.array_equal(ds.load_label(c.case_id).array, orig.load_label(c.case_id).array)
        assert ds.load_image(c.case_id).same_grid(orig.load_image(c.case_id))


@pytest.mark.parametrize("kwargs, err, match", [
    ({"protocol": "low-dose-shrp"}, ConfigError, "did you mean 'low-dose-sharp'"),
    ({"dose_fraction": 0.5, "kernel": "bone"}, ConfigError, "unknown reconstruction kernel"),
    ({"dose_fraction": 0.0, "kernel": "sharp"}, ConfigError, "dose fraction"),
    ({"dose_fraction": 1.2}, ConfigError, "dose fraction"),
])
def test_simulate_bad_input_writes_nothing(bench, tmp_path, kwargs, err, match):
    with pytest.raises(err, match=match):
        simulate_dataset(bench[0], tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_simulate_dataset_without_images(bench, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bench[0], broken)
    for p in (broken / "imagesTr").iterdir():
        p.unlink()
    with pytest.raises(InputError, match="no image file"):
        simulate_dataset(broken, tmp_path / "y", protocol="standard")
    assert not (tmp_path / "y").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="dataset.json"):
        simulate_dataset(empty, tmp_path / "z", protocol="standard")
    assert not (tmp_path / "z").exists()


def test_cli_errors_are_one_line(bench, tmp_path):
    r = CliRunner().invoke(app, ["simulate", str(bench[0]), "--out", str(tmp_path / "o"), "--kernel", "sharpp"])
    assert r.exit_code == 2 and "did you mean 'sharp'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["make-benchmark", "--out", str(tmp_path / "m"), "--preset", "quik"])
    assert r.exit_code == 2 and "did you mean 'quick'" in r.output
    r = CliRunner().invoke(app, ["simulate", str(bench[0]), "--out", str(tmp_path / "s"), "--protocol",
                                 "low-dose-smooth"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "s" / "dataset.json").read_text())["styleseg"]["meta"]
    assert meta["simulated"]["protocol"]["name"] == "low-dose-smooth"


def test_simulate_a_noise_free_image_simulates_the_full_noise(tmp_path):
    """A synthetic water cylinder (no acquisition noise) has no reference dose to add noise to: it is re-imaged
    as a clean input, with the protocol's whole noise (it used to crash with ZeroDivisionError)."""
    from styleseg.io.dataset import DatasetWriter
    from styleseg.io.volume import Volume
    from styleseg.labels import LabelSchema

    yy, xx = np.mgrid[:192, :192]
    water = (yy - 96) ** 2 + (xx - 96) ** 2 < 80**2
    hu = np.where(water, 0, -1000).astype(np.int16)[None]
    with DatasetWriter(tmp_path / "cyl", "cylinder", LabelSchema.default()) as w:
        w.add_case("cyl", Volume(hu, (0.8, 0.8, 5.0)))
    res = CliRunner().invoke(app, ["simulate", str(tmp_path / "cyl"), "--protocol", "low-dose-sharp",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    out = Dataset(tmp_path / "out").load_image("cyl").array[0].astype(float)
    inner = (yy - 96) ** 2 + (xx - 96) ** 2 < 50**2
    assert abs(out[inner].mean()) < 15  # still water
    assert 20 < out[inner].std() < 400  # with the noise of a quarter-dose sharp-kernel scan
