"""End to end at toy size: every stage and every arm of `styleseg run`, then what re-runs do with the run folder.

Minutes of CPU at most: tiny phantoms, a few optimiser steps per network. It checks the plumbing (stages,
artifacts, skipping, the report), not accuracy; accuracy lives in benchmarks/ and BENCHMARKS.md. The whole
pipeline runs once (module fixture, from a run folder given relative to the working directory, as `make demo`
gives it); each scenario after that works on its own copy of the finished run folder.
"""

from __future__ import annotations

import hashlib
import html as htmllib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from styleseg.config import ConfigError
from styleseg.pipeline import ALL_ARMS, ARMS, ExperimentConfig, load_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[2]
TOY = """
name = "toy"
preset = "quick"
seed = 3
n_styles = 2
arms = {arms}

[data]
benchmark = true
style_pool_fraction = 0.34
agreement_pairs = [["{pairs}/pair_a.nii.gz", "{pairs}/pair_b.nii.gz"]]

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
n_boot = 200
"""


def _toml(tmp: Path, arms: tuple[str, ...], text: str = TOY, pairs: Path | None = None) -> Path:
    """The toy experiment in ``tmp``, with a same-scan pair (one phantom, two noise levels) for the agreement stage
    in ``pairs`` (default ``tmp``), named by absolute path (so a copy of the run folder sees the same inputs)."""
    pairs = pairs or tmp
    import numpy as np

    from styleseg.io.volume import write_nifti
    from styleseg.sim.phantom import PhantomConfig, make_phantom

    if not (pairs / "pair_a.nii.gz").exists():
        img, _ = make_phantom(1, PhantomConfig(size=192, n_slices=2))
        rng = np.random.default_rng(0)
        for name, sd in (("pair_a.nii.gz", 20.0), ("pair_b.nii.gz", 80.0)):
            write_nifti(img.with_array((img.array + rng.normal(0, sd, img.shape)).astype(np.int16)), pairs / name)
    p = tmp / "toy.toml"
    p.write_text(text.format(arms=json.dumps(list(arms)), pairs=pairs))
    return p


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished toy run of every arm in ``<tmp>/run``, started from ``<tmp>`` with the relative path "run"."""
    import os

    tmp = tmp_path_factory.mktemp("e2e")
    cfg = load_experiment(_toml(tmp, ALL_ARMS))
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        summary = run_experiment(cfg, Path("run"))
    finally:
        os.chdir(cwd)
    assert summary["skipped_arms"] == {}
    return tmp / "run"


@pytest.fixture
def copy(finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the finished run (and its experiment file), with the working directory beside it."""
    shutil.copytree(finished, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "run"


def _ran(summary: dict) -> set[str]:
    return {name for name, t in summary["timings"].items() if not t["skipped"]}


@pytest.mark.slow
def test_every_arm_is_trained_predicted_and_evaluated(finished: Path) -> None:
    run = finished
    split = json.loads((run / "split.json").read_text())
    styles = json.loads((run / "styles" / "styles.json").read_text())["styles"]
    assert {s["case_id"] for s in styles} <= set(split["style_pool"])  # style slices never from test patients
    assert not set(split["style_pool"]) & set(split["test"])
    for arm in ALL_ARMS:
        m = json.loads((run / "arms" / arm / "metrics.json").read_text())
        assert sorted(m["cases"]) == sorted(split["test"]), arm
        assert 0.0 <= m["mean"]["lung_left"]["dice"]["mean"] <= 1.0
        assert m["config"]["n_boot"] == 200  # the [evaluate] section is used
        if arm != "reference":  # every arm is compared with the reference arm, which runs here
            assert m["comparison"]["other"].endswith("arms/reference/pred")
    # the position arm is the baseline's U-Net plus two position channels; every other arm keeps the paper's
    meta = {a: json.loads((run / "arms" / a / "model" / "model.json").read_text())
            for a in ("baseline", "position", "reference", "styleseg_ref", "styleseg_mix_ref", "styleseg_ft_ref",
                      "reference_ft")}
    assert meta["position"]["position"] and not meta["baseline"]["position"]
    # styleseg_mix_ref is styleseg_ref, on the same augmented data, with half of its samples from the real source
    assert meta["styleseg_mix_ref"]["config"]["real_share"] == 0.5 and meta["styleseg_ref"]["config"]["real_share"] \
        is None
    assert meta["styleseg_mix_ref"]["split"] == meta["styleseg_ref"]["split"]
    # the fine-tuning arms start from the reference's model, at a third of its learning rate; the control on the
    # reference's own data, styleseg's on the augmented data
    for a in ("styleseg_ft_ref", "reference_ft"):
        assert meta[a]["init_from"] == {"model": "run/arms/reference/model",
                                        "config_hash": meta["reference"]["config_hash"]}, a
        assert meta[a]["config"]["lr"] == pytest.approx(meta["reference"]["config"]["lr"] / 3), a
    assert meta["reference_ft"]["datasets"] == meta["reference"]["datasets"]
    assert meta["styleseg_ft_ref"]["datasets"] == meta["styleseg_ref"]["datasets"]
    assert meta["position"]["architecture"]["in_channels"] == meta["baseline"]["architecture"]["in_channels"] + 2
    assert not (run / "arms" / "denoise" / "model").exists()  # denoise applies the baseline's model
    # m x (n+1): 3 source cases x (2 styles + original)
    aug = json.loads((run / "data" / "aug_separate" / "dataset.json").read_text())
    assert len(aug["styleseg"]["cases"]) == 3 * 3
    assert (run / "figures" / "style_grid.png").exists()
    agree = json.loads((run / "agreement.json").read_text())["arms"]
    assert set(agree) == set(ALL_ARMS)  # every arm (denoise with the baseline model)
    assert all(0.0 <= v <= 1.0 for d in agree.values() for v in d.values())


@pytest.mark.slow
def test_the_report_describes_every_arm(finished: Path) -> None:
    """The report of a pipeline run (not a fixture): each arm's description comes from the arm table, its Dice
    from its metrics.json."""
    text = (finished / "report.html").read_text()
    rows = dict(re.findall(r"<tr><td class=l>([a-z_]+)</td><td class=l>[a-z]*</td><td class=l>([^<]*)</td>", text))
    assert {a: htmllib.unescape(rows[a]) for a in ALL_ARMS} == {a: ARMS[a].title for a in ALL_ARMS}
    m = json.loads((finished / "arms" / "baseline" / "metrics.json").read_text())["mean"]["heart"]["dice"]
    dice_table = text[text.index("<h3>Dice</h3>"):text.index("<h3>HD95")]
    baseline_row = re.search(r"<tr><td class=l>baseline</td>(.*?)</tr>", dice_table).group(1)
    assert f"{m['mean']:.3f} <span class=ci>[{m['ci_low']:.3f}, {m['ci_high']:.3f}]" in baseline_row


@pytest.mark.slow
def test_the_report_of_a_run_started_elsewhere_shows_its_segmentations(finished: Path) -> None:
    """run.json names the evaluation dataset relative to the run folder, so the segmentation figure is found
    whatever the working directory was (the run was started from the run folder's parent, as `make demo`)."""
    assert json.loads((finished / "run.json").read_text())["target_ref"] == "data/target_test"
    text = (finished / "report.html").read_text()
    assert "Segmentations (as the paper" in text and "not found" not in text
    assert text.count('<img src="data:image/png;base64,') >= 7  # bars, diffs, overlay, curves, style grid, sheet


@pytest.mark.slow
def test_a_second_run_does_nothing(copy: Path, finished: Path) -> None:
    again = run_experiment(load_experiment(_toml(copy.parent, ALL_ARMS, pairs=finished.parent)), Path("run"))
    assert again["all_skipped"]


@pytest.mark.slow
def test_fewer_arms_retrain_nothing_and_redo_only_the_report(copy: Path, finished: Path) -> None:
    s = run_experiment(load_experiment(_toml(copy.parent, ("baseline", "lowres"), pairs=finished.parent)), Path("run"))
    ran = _ran(s)
    assert "data" not in ran and "train_baseline" not in ran and "report" in ran


@pytest.mark.slow
def test_a_changed_setting_retrains_from_scratch_and_repredicts(copy: Path, finished: Path) -> None:
    p = _toml(copy.parent, ("baseline", "lowres"), TOY.replace("steps_per_epoch = 2", "steps_per_epoch = 3"),
              finished.parent)
    s = run_experiment(load_experiment(p), Path("run"))
    assert {"train_baseline", "train_lowres", "evaluate_baseline"} <= _ran(s) and "data" not in _ran(s)
    log = (copy / "arms" / "baseline" / "model" / "train_log.jsonl").read_text().strip().splitlines()
    assert len(log) == 1 and json.loads(log[0])["step"] == 3  # a fresh run of 1 epoch x 3 steps, not a resume
    # ... and its predictions are redone with the new weights, not kept from the old model by --continue
    model_dir, pred_dir = copy / "arms" / "baseline" / "model", copy / "arms" / "baseline" / "pred"
    sha = hashlib.sha1((model_dir / "weights.pt").read_bytes()).hexdigest()
    assert (pred_dir / ".model_sha1").read_text().strip() == sha
    preds = list(pred_dir.glob("*.nii.gz"))
    assert preds and all(f.stat().st_mtime >= (model_dir / "weights.pt").stat().st_mtime for f in preds)


@pytest.mark.slow
def test_interrupted_under_one_config_and_resumed_under_another_starts_over(copy: Path, finished: Path) -> None:
    """A checkpoint and no finished marker (an interrupted stage), then another config: from scratch."""
    (copy / "stages" / "train_lowres.json").unlink()
    p = _toml(copy.parent, ("baseline", "lowres"), TOY.replace("steps_per_epoch = 2", "steps_per_epoch = 4"),
              finished.parent)
    s = run_experiment(load_experiment(p), Path("run"))
    assert "train_lowres" in _ran(s)
    log = (copy / "arms" / "lowres" / "model" / "train_log.jsonl").read_text().strip().splitlines()
    assert len(log) == 1 and json.loads(log[0])["step"] == 4


@pytest.mark.slow
def test_a_run_folder_of_the_previous_version_is_still_reported(copy: Path) -> None:
    """run.json as styleseg wrote it before the run-folder contract: arm names plus ``arm_titles``, and
    ``target_ref`` relative to the working directory the run was started from."""
    from styleseg.eval.report import write_report

    old = {"title": "toy", "preset": "quick", "seed": 3, "arms": list(ALL_ARMS),
           "arm_titles": {a: ARMS[a].title for a in ALL_ARMS}, "baseline": "baseline", "oracle": "oracle",
           "target_ref": "demo-run/data/target_test", "stages": {}, "config": {}}
    (copy / "run.json").write_text(json.dumps(old))
    # agreement.json before it held a summary over seeds: the first seed's means, one value per arm and structure
    (copy / "agreement.json").write_text(json.dumps({"pairs": [["x/a.nii.gz", "x/b.nii.gz"]],
                                                     "arms": {"baseline": {"heart": 0.4321}}}))
    text = write_report(copy, copy / "old.html", n_boot=50).read_text()
    assert "Segmentations (as the paper" in text and "not found" not in text
    assert htmllib.escape(ARMS["styleseg"].title) in text
    section = text[text.index("<h2>Agreement on same-scan pairs</h2>"):]
    assert "a.nii.gz / b.nii.gz" in section and "<td>0.432</td>" in section


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'styleseg'"):
        ExperimentConfig(arms=("baseline", "stylseg"))
    with pytest.raises(ConfigError, match="'baseline' or 'reference' is required"):
        ExperimentConfig(arms=("oracle", "denoise"))
    bad = tmp_path / "bad.toml"
    for text, match in (('name = "x"\nn_style = 3\n', "did you mean 'n_styles'"),
                        ('[train_seg]\nepochz = 3\n', r"bad.toml \[train_seg\]: unknown key 'epochz'"),
                        ('[generators]\nsteps = -1\n', r"steps, batch and lr must be positive"),
                        ('[evaluate]\nn_boot = -3\n', r"n_boot must be >= 1"),
                        ('[evaluate]\nnboot = 3\n', r"\[evaluate\]: unknown key 'nboot'; did you mean 'n_boot'"),
                        ('[data]\nbenchmark = true\ntarget_protocols = ["low-dose-shrp"]\n', "did you mean"),
                        ('style_slices = ["LUNG1-008"]\n', "is not CASE:SLICE")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_experiment(bad)


@pytest.mark.slow
def test_seeds_and_the_arms_beyond_the_paper(tmp_path: Path) -> None:
    """Two training seeds of the reference and the arms layered on it, trained two at a time in worker processes
    (the source-only arms start beside the generators and the re-imaging): a folder per seed, seeds.json with
    means over seeds x cases and paired differences to the reference, cyclic rounds recorded, physics
    randomisation with random protocols, and the report's seeds section."""
    arms = ("baseline", "reference", "styleseg_ref", "consistency_ref", "cyclic_ref", "physics_ref", "oracle_ref",
            "styleseg_ft_ref", "cyclic_ft_ref")
    text = TOY.replace('arms = {arms}', 'arms = {arms}\nseeds = [3, 4]\njobs = 2')
    text = text.replace("batch_size = 2", "batch_size = 4")
    cfg = load_experiment(_toml(tmp_path, arms, text))
    run = tmp_path / "run"
    events: list[tuple[str, str]] = []
    s = run_experiment(cfg, run, lambda name, what: events.append((name, what)))
    assert s["skipped_arms"] == {}
    # the source-only arms go to the workers first, before the generators and the re-imaging the others need
    order = [n for n, w in events if w == "queued for a worker" or (w == "started" and "_data" in n or
                                                                       n.startswith("generators"))]
    first_data = min(i for i, n in enumerate(order) if not n.startswith("train_"))
    assert set(order[:first_data]) == {"train_baseline", "train_reference", "train_baseline@4", "train_reference@4"}
    # the oracle's right after its re-imaging, and each seed's generated-data arms before the next seed's data
    assert order[first_data:first_data + 3] == ["oracle_data", "train_oracle_ref", "train_oracle_ref@4"]
    later = order.index(next(n for n in order if n.endswith("@4") and not n.startswith("train_")))
    assert {"train_styleseg_ref", "train_consistency_ref", "train_physics_ref"} <= set(order[:later])
    assert not any(n.endswith("@4") for n in order[first_data + 3:later])
    queued = [n for n, w in events if w == "queued for a worker"]
    assert len(queued) == len(set(queued))  # every arm, seed and cyclic round once
    # a fine-tuning is queued after the model it starts from is done, and starts from that seed's model
    at = {(n, w.split()[0]): i for i, (n, w) in enumerate(events)}
    assert at[("train_reference@4", "done")] < at[("train_styleseg_ft_ref@4", "queued")]
    assert at[("train_styleseg_ft_ref", "queued")] < at[("train_reference@4", "done")]  # not after every seed's
    ft4 = json.loads((run / "arms" / "styleseg_ft_ref" / "seed4" / "model" / "model.json").read_text())
    assert ft4["init_from"]["model"] == str(run / "arms" / "reference" / "seed4" / "model")
    for arm in arms:
        assert (run / "arms" / arm / "metrics.json").exists()
        assert (run / "arms" / arm / "seed4" / "metrics.json").exists()
    m3, m4 = (json.loads((run / "arms" / "reference" / p / "model.json").read_text())
              for p in ("model", "seed4/model"))
    assert (m3["config"]["seed"], m4["config"]["seed"]) == (3, 4) and m3["position"]
    assert json.loads((run / "arms" / "consistency_ref" / "model" / "model.json").read_text())["config"][
        "consistency_weight"] == 1.0
    assert (run / "data" / "aug_separate_seed4").exists() and (run / "generators" / "separate_seed4").exists()
    rnd = json.loads((run / "arms" / "cyclic_ref" / "round1" / "round.json").read_text())
    assert rnd["kept"] >= 1 and rnd["from_model"] == "arms/styleseg_ref/model"
    assert json.loads((run / "arms" / "cyclic_ref" / "round2" / "round.json").read_text())["from_model"] == \
        "arms/cyclic_ref/round1/model"
    # the fine-tuning form of the cyclic rounds: the reference pseudo-labels first, and every round fine-tunes it
    cft = run / "arms" / "cyclic_ft_ref" / "seed4"
    assert json.loads((cft / "round1" / "round.json").read_text())["from_model"] == "arms/reference/seed4/model"
    assert json.loads((cft / "round2" / "round.json").read_text())["from_model"] == \
        "arms/cyclic_ft_ref/seed4/round1/model"
    for model in (cft / "round1" / "model", cft / "model"):
        assert json.loads((model / "model.json").read_text())["init_from"]["model"] == \
            str(run / "arms" / "reference" / "seed4" / "model")
    protocols = json.loads((run / "data" / "physics" / "dataset.json").read_text())["styleseg"]["meta"]["physics"][
        "protocols"]
    assert len(protocols) == 3 * 4 and len(set(protocols)) > 1
    seeds = json.loads((run / "seeds.json").read_text())
    assert seeds["reference"] == "reference" and seeds["seeds"] == [3, 4]
    d = seeds["arms"]["styleseg_ref"]["vs_reference"]["lung_left"]["dice"]
    assert d["n_seeds"] == [2, 2] and isinstance(d["resolved"], bool) and d["ci_low"] <= d["mean_diff"] <= d["ci_high"]
    assert "vs_reference" not in seeds["arms"]["reference"]
    # benchmarks/seeds_table.py prints the difference of seeds.json, bold only where its CI excludes 0
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds_table.py"), f"{run}=toy"],
                           capture_output=True, text=True, check=True).stdout
    cell = f"{d['mean_diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
    assert cell in table and (f"**{cell}**" in table) == d["resolved"]
    # --pair computes any two arms' difference the way seeds.json computes an arm's to the reference
    paired = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds_table.py"), str(run), "--pair",
                             "styleseg_ref", "reference"], capture_output=True, text=True, check=True).stdout
    assert "styleseg_ref - reference" in paired and cell in paired.split("paired difference styleseg_ref")[1]
    # --gap: the gap oracle - control, each other arm's paired difference to the control and the share it closes
    gapped = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds_table.py"), str(run), "--gap",
                             "oracle_ref", "reference"], capture_output=True, text=True, check=True).stdout
    g = seeds["arms"]["oracle_ref"]["vs_reference"]["lung_left"]["dice"]

    def cell_of(x: dict) -> str:
        t = f"{x['mean_diff']:+.3f} [{x['ci_low']:+.3f}, {x['ci_high']:+.3f}]"
        return f"**{t}**" if x["resolved"] else t

    table_rows = gapped.split("the gap oracle_ref - reference")[1].split("\n\n")[1].splitlines()
    gap_rows = {r.split(" | ")[0][2:]: r.split(" | ")[1] for r in table_rows[2:]}
    assert gap_rows["oracle_ref (the gap)"] == cell_of(g) and "reference" not in gap_rows
    want = (f"{d['mean_diff'] / g['mean_diff']:+.0%} of " if g["ci_low"] > 0 else "no gap; ") + cell_of(d)
    assert gap_rows["styleseg_ref"] == want
    # --cases: --pair over the cases whose id holds the text only; here one case, so the mean over seeds of its
    # per-seed difference
    per = {arm: [json.loads((run / "arms" / arm / p / "metrics.json").read_text()) for p in ("", "seed4")]
           for arm in ("styleseg_ref", "reference")}
    one = per["reference"][0]["cases"][0]

    def dice(m: dict) -> float:
        return next(c for c in m["per_case"] if c["case"] == one)["metrics"]["lung_left"]["dice"]

    mean = sum(dice(a) - dice(b) for a, b in zip(per["styleseg_ref"], per["reference"], strict=True)) / 2
    only = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds_table.py"), str(run), "--pair",
                           "styleseg_ref", "reference", "--cases", one], capture_output=True, text=True,
                          check=True).stdout.split(f"cases *{one}*")[1]
    assert next(r for r in only.splitlines() if r.startswith(f"| {run.name} |")).split(" | ")[1].lstrip("*") \
        .startswith(f"{mean:+.3f} [")
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds_table.py"), str(run), "--pair",
                          "styleseg_ref", "reference", "--cases", "no-such-case"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no test case of 'styleseg_ref' has 'no-such-case'" in bad.stderr
    # --per-seed: each arm's test Dice per seed, from its metrics.json (seed 4 in arms/ARM/seed4)
    per = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds_table.py"), str(run), "--per-seed",
                          "lung_left"], capture_output=True, text=True, check=True).stdout
    m4 = json.loads((run / "arms" / "styleseg_ft_ref" / "seed4" / "metrics.json").read_text())["mean"]
    row = next(r for r in per.split("per seed, lung_left")[1].splitlines() if r.startswith("| styleseg_ft_ref |"))
    assert row.split(" | ")[2].startswith(f"{m4['lung_left']['dice']['mean']:.2f} (")
    # the same-scan agreement over both seeds, with each arm's paired difference to the reference
    agree = json.loads((run / "agreement.json").read_text())
    assert set(agree["per_seed"]["styleseg_ref"]) == {"3", "4"}
    a = agree["summary"]["arms"]["styleseg_ref"]
    assert a["mean"]["lung_left"]["n_seeds"] == 2 and a["mean"]["lung_left"]["n_cases"] == 1
    assert set(a["absent"]) == set(a["mean"]) and all(0 <= k <= 2 for k in a["absent"].values())
    ref_absent = agree["summary"]["arms"]["reference"]["absent"]
    assert "Agreement on the same-scan pairs (toy)" in table
    for s, ad in a["vs_reference"].items():
        assert ad["n_seeds"] == [2, 2]
        if a["absent"][s] == 2 or ref_absent[s] == 2:  # one arm found it in neither scan in both seeds
            assert ad["mean_diff"] != ad["mean_diff"] and not ad["resolved"] and ad["n_cases"] == 0
        else:
            assert ad["ci_low"] <= ad["mean_diff"] <= ad["ci_high"]
            assert f"{ad['mean_diff']:+.3f} [{ad['ci_low']:+.3f}, {ad['ci_high']:+.3f}]" in table
    text = (run / "report.html").read_text()
    assert "Over 2 training seeds" in text and "Paired difference to the reference arm (reference)" in text
    section = text[text.index("<h2>Agreement on same-scan pairs</h2>"):]
    assert "pair_a.nii.gz / pair_b.nii.gz" in section
    for ad in a["vs_reference"].values():
        assert (f"{ad['mean_diff']:+.3f} <span class=ci>[{ad['ci_low']:+.3f}, {ad['ci_high']:+.3f}]</span>"
                if ad["mean_diff"] == ad["mean_diff"] else "<i>found in neither</i>") in section
    assert run_experiment(cfg, run)["all_skipped"]
