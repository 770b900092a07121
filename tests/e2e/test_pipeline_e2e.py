"""End to end at toy size: every stage and every arm of `styleseg run`, then a re-run that skips all.

Minutes of CPU at most: tiny phantoms, a few optimiser steps per network. It checks the plumbing
(stages, artifacts, skipping, report), not accuracy; accuracy lives in benchmarks/ and BENCHMARKS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from styleseg.config import ConfigError
from styleseg.pipeline import ALL_ARMS, ExperimentConfig, load_experiment, run_experiment

TOY = """
name = "toy"
preset = "quick"
seed = 3
n_styles = 2
arms = {arms}

[data]
benchmark = true
style_pool_fraction = 0.34
agreement_pairs = [["pair_a.nii.gz", "pair_b.nii.gz"]]

[benchmark]
n_source = 3
n_target = 3
source_slices = 2
target_slices = 2
size = 192
target_protocols = ["low-dose-sharp", "ultra-low-dose-standard"]

[select]
candidates_per_case = 2
use_vgg = false

[generators]
steps = 2
crop = 32
base = 4
n_res = 1
checkpoint_every = 1

[train_seg]
epochs = 1
steps_per_epoch = 2
crop = 64
batch_size = 2
base_channels = 4
depth = 2
val_fraction = 0.0

[evaluate]
"""


def _toml(tmp: Path, arms: tuple[str, ...]) -> Path:
    """The toy experiment, plus a same-scan pair (one phantom, two noise levels) for the agreement stage."""
    import numpy as np

    from styleseg.io.volume import write_nifti
    from styleseg.sim.phantom import PhantomConfig, make_phantom

    img, _ = make_phantom(1, PhantomConfig(size=192, n_slices=2))
    rng = np.random.default_rng(0)
    for name, sd in (("pair_a.nii.gz", 20.0), ("pair_b.nii.gz", 80.0)):
        write_nifti(img.with_array((img.array + rng.normal(0, sd, img.shape)).astype(np.int16)), tmp / name)
    p = tmp / "toy.toml"
    p.write_text(TOY.format(arms=json.dumps(list(arms))))
    return p


@pytest.mark.slow
def test_whole_pipeline_every_arm_then_rerun_skips(tmp_path: Path) -> None:
    cfg = load_experiment(_toml(tmp_path, ALL_ARMS))
    run = tmp_path / "run"
    events: list[tuple[str, str]] = []
    summary = run_experiment(cfg, run, on_event=lambda s, w: events.append((s, w)))
    assert summary["skipped_arms"] == {}
    split = json.loads((run / "split.json").read_text())
    styles = json.loads((run / "styles" / "styles.json").read_text())["styles"]
    # style slices never come from test patients
    assert {s["case_id"] for s in styles} <= set(split["style_pool"])
    assert not set(split["style_pool"]) & set(split["test"])
    for arm in ALL_ARMS:
        m = json.loads((run / "arms" / arm / "metrics.json").read_text())
        assert sorted(m["cases"]) == sorted(split["test"]), arm
        assert "lung_left" in m["mean"]
        if arm != "baseline":
            assert "comparison" in m
    # the position arm is the baseline's U-Net plus two position channels; every other arm keeps the paper's
    meta = {a: json.loads((run / "arms" / a / "model" / "model.json").read_text()) for a in ("baseline", "position")}
    assert meta["position"]["position"] and not meta["baseline"]["position"]
    assert meta["position"]["architecture"]["in_channels"] == meta["baseline"]["architecture"]["in_channels"] + 2
    # m x (n+1): 3 source cases x (2 styles + original)
    aug = json.loads((run / "data" / "aug_separate" / "dataset.json").read_text())
    assert len(aug["styleseg"]["cases"]) == 3 * 3
    html = (run / "report.html").read_text()
    for arm in ALL_ARMS:
        assert arm in html
    assert (run / "figures" / "style_grid.png").exists()
    agree = json.loads((run / "agreement.json").read_text())["arms"]
    assert set(agree) == set(ALL_ARMS)  # every arm (denoise with the baseline model)
    assert all(0.0 <= v <= 1.0 for d in agree.values() for v in d.values())
    # a second run does nothing
    again = run_experiment(cfg, run)
    assert again["all_skipped"]
    # fewer arms: nothing is retrained, only the report is redone
    s3 = run_experiment(load_experiment(_toml(tmp_path, ("baseline", "lowres"))), run)
    ran = {name for name, t in s3["timings"].items() if not t["skipped"]}
    assert "data" not in ran and "train_baseline" not in ran and "report" in ran
    # a changed segmentation setting retrains from scratch (no resume of the old checkpoint), not the data
    p = _toml(tmp_path, ("baseline", "lowres"))
    p.write_text(p.read_text().replace("steps_per_epoch = 2", "steps_per_epoch = 3"))
    s4 = run_experiment(load_experiment(p), run)
    ran = {name for name, t in s4["timings"].items() if not t["skipped"]}
    assert {"train_baseline", "train_lowres", "evaluate_baseline"} <= ran and "data" not in ran
    log = (run / "arms" / "baseline" / "model" / "train_log.jsonl").read_text().strip().splitlines()
    assert len(log) == 1 and json.loads(log[0])["step"] == 3  # a fresh run of 1 epoch x 3 steps
    # ... and its predictions are redone with the new weights, not kept from the old model by --continue
    import hashlib

    model_dir, pred_dir = run / "arms" / "baseline" / "model", run / "arms" / "baseline" / "pred"
    sha = hashlib.sha1((model_dir / "weights.pt").read_bytes()).hexdigest()
    assert (pred_dir / ".model_sha1").read_text().strip() == sha
    preds = list(pred_dir.glob("*.nii.gz"))
    assert preds and all(f.stat().st_mtime >= (model_dir / "weights.pt").stat().st_mtime for f in preds)
    # interrupted under one config (a checkpoint, no finished marker), resumed under another: from scratch
    (run / "stages" / "train_lowres.json").unlink()
    p.write_text(p.read_text().replace("steps_per_epoch = 3", "steps_per_epoch = 4"))
    s5 = run_experiment(load_experiment(p), run)
    assert not s5["timings"]["train_lowres"]["skipped"]
    log = (run / "arms" / "lowres" / "model" / "train_log.jsonl").read_text().strip().splitlines()
    assert len(log) == 1 and json.loads(log[0])["step"] == 4


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'styleseg'"):
        ExperimentConfig(arms=("baseline", "stylseg"))
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nn_style = 3\n')
    with pytest.raises(ConfigError, match="did you mean 'n_styles'"):
        load_experiment(bad)
    bad.write_text('[train_seg]\nepochz = 3\n')
    with pytest.raises(ConfigError, match="epochs"):
        load_experiment(bad).seg_config()
