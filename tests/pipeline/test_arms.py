"""The arm table (pipeline/arms.py): what an arm changes in the run's U-Net settings."""

from __future__ import annotations

import pytest

from styleseg.pipeline.arms import ARMS, Arm
from styleseg.seg.train import SegTrainConfig


def test_a_fine_tuning_arm_trains_a_share_of_the_budget_at_a_share_of_the_rate():
    """Arm.budgeted: the run's U-Net settings with the arm's epochs and learning rate scaled; an arm without a
    budget gets them unchanged (the same object, so its stage hash is the one it always had)."""
    cfg = SegTrainConfig(epochs=20, lr=3e-3)
    ft = ARMS["styleseg_ft_ref"].budgeted(cfg)
    assert (ft.epochs, ft.lr) == (7, pytest.approx(1e-3)) and ft.batch_size == cfg.batch_size
    assert ARMS["styleseg_ref"].budgeted(cfg) is cfg
    assert Arm("x", "x", starts_from="reference", budget=0.01).budgeted(cfg).epochs == 1  # at least one epoch
    for bad in ({"budget": 0.0}, {"budget": 1.5}, {"lr_scale": 0.0}, {"starts_from": "x"}):
        with pytest.raises(ValueError, match="starts_from"):
            Arm("x", "x", **{"starts_from": "reference", **bad})


def test_the_job_trains_a_fine_tuning_after_its_start_model_and_skips_it_with_that_model():
    """Job.job_arms on an arm list whose fine-tuning comes first: it is moved after the models it may start from;
    with its start arm skipped (the oracle is benchmark-only), it is skipped too, saying why."""
    from types import SimpleNamespace

    from styleseg.pipeline.job import Job

    job = SimpleNamespace(cfg=SimpleNamespace(arms=("styleseg_ft_ref", "reference", "styleseg_ref")), skipped_arms={})
    assert [a.name for a in Job.job_arms(job)] == ["reference", "styleseg_ref", "styleseg_ft_ref"]
    oracle_ft = Arm("oracle_ft", "x", starts_from="oracle_ref")
    job = SimpleNamespace(cfg=SimpleNamespace(arms=("oracle_ref", "oracle_ft", "reference")), skipped_arms={})
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ARMS, "oracle_ft", oracle_ft)
        assert [a.name for a in Job.job_arms(job)] == ["reference"]
    assert "oracle_ref" in job.skipped_arms["oracle_ft"]


def test_the_job_labels_style_slices_with_the_strongest_source_only_arm_it_trains():
    """Job.labeller with ``labeller = "auto"``: the reference recipe where it is an arm, else position, else the
    baseline; a named labeller must be a source-only arm of the experiment."""
    from types import SimpleNamespace

    from styleseg.errors import ConfigError
    from styleseg.pipeline.job import Job

    def labeller(arms, name="auto"):
        cfg = SimpleNamespace(arms=arms, seg_config=lambda: SimpleNamespace(position=True))
        job = SimpleNamespace(cfg=cfg, job=SimpleNamespace(labeller=name), warned=False)
        return Job.labeller(job).name

    assert labeller(("baseline", "position", "reference", "styleseg_ft_ref")) == "reference"
    assert labeller(("baseline", "position", "styleseg")) == "position"
    assert labeller(("baseline", "styleseg")) == "baseline"
    assert labeller(("baseline", "reference"), "baseline") == "baseline"
    for bad in ("styleseg_ft_ref", "position"):
        with pytest.raises(ConfigError, match="source-only arm"):
            labeller(("reference", "styleseg_ft_ref"), bad)


def test_the_demo_compares_styleseg_and_the_oracle_as_the_same_fine_tuning_of_the_reference():
    """The demo's arms exist, each fine-tuning starts from an arm the demo trains, and the oracle fine-tuning differs
    from styleseg's only in its data and role: so the demo's styleseg-vs-oracle comparison is one of data."""
    import dataclasses

    from styleseg.pipeline.config import DEMO_ARMS, demo_config

    cfg = demo_config()
    assert cfg.arms == DEMO_ARMS and {"baseline", "reference"} <= set(cfg.arms)
    for name in cfg.arms:
        assert ARMS[name].starts_from in (None, *cfg.arms)
    ft, oracle = ARMS["styleseg_ft_ref"], ARMS["oracle_ft_ref"]
    assert oracle.role == "oracle" and oracle.train_on == ("oracle",) and oracle.starts_from == "reference"
    same = ("name", "title", "train_on", "role")
    assert {f.name: getattr(ft, f.name) for f in dataclasses.fields(Arm) if f.name not in same} == \
        {f.name: getattr(oracle, f.name) for f in dataclasses.fields(Arm) if f.name not in same}
    # the demo's U-Nets: 400 steps, the cross-entropy balanced at first and plain at the end (BENCHMARKS.md)
    seg = cfg.train_seg
    assert seg.epochs * seg.steps_per_epoch == 400 and seg.ce_balance == 1.0 and seg.ce_balance_decay
    assert ARMS["styleseg_ft_ref"].budgeted(seg).epochs * seg.steps_per_epoch == 150
