"""Config machinery: typos are rejected with a hint; types are checked; hashes are stable."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from styleseg.config import check_preset, config_hash, from_dict, hash_view, new_option, to_dict
from styleseg.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    layers: tuple[str, ...] = ("a",)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)
    mode: str | None = None


def test_unknown_key_gets_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"exp.toml: unknown key 'stpes'; did you mean 'steps'"):
        from_dict(Outer, {"stpes": 3}, "exp.toml")


def test_types_are_checked_and_nested_tables_built() -> None:
    cfg = from_dict(Outer, {"steps": 5, "inner": {"lr": 1, "layers": ["b", "c"]}})
    assert cfg.steps == 5 and cfg.inner.lr == 1.0 and cfg.inner.layers == ("b", "c")
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        from_dict(Outer, {"steps": "5"})
    with pytest.raises(ConfigError, match=r"inner.lr: expected a finite number"):
        from_dict(Outer, {"inner": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"inner: unknown key 'lrr'"):
        from_dict(Outer, {"inner": {"lrr": 1.0}})


@dataclass(frozen=True)
class InnerV2(Inner):  # Inner after a release that added an option
    smooth: bool = new_option(False)


@dataclass(frozen=True)
class OuterV2(Outer):
    inner: InnerV2 = field(default_factory=InnerV2)
    extra_steps: int = new_option(0)


def test_a_new_option_at_its_default_keeps_old_hashes() -> None:
    """Adding an option must not invalidate finished runs (a pipeline would redo hours of training): at its
    default it is left out of the hash, nested too; set, it counts; to_dict still writes it."""
    assert config_hash(OuterV2()) == config_hash(Outer())
    assert config_hash(OuterV2(steps=3)) == config_hash(Outer(steps=3))
    assert config_hash(OuterV2(extra_steps=1)) != config_hash(Outer())
    assert config_hash(OuterV2(inner=InnerV2(smooth=True))) != config_hash(Outer())
    assert to_dict(OuterV2())["extra_steps"] == 0 and to_dict(OuterV2())["inner"]["smooth"] is False


@dataclass(frozen=True)
class Smoothing:  # an option whose unset default follows another option
    filtered: bool = False
    sharp_edges: bool | None = new_option(None)

    def hash_resolved(self) -> Smoothing:
        on = self.filtered if self.sharp_edges is None else self.sharp_edges
        return Smoothing(self.filtered, True if on else None)


def test_an_option_resolved_from_another_hashes_at_the_value_it_takes() -> None:
    """``hash_resolved()``: unset and set to the value it resolves to hash alike; set to its old behaviour (false), it
    hashes as before the option existed; a changed resolution changes the hash."""
    assert config_hash(Smoothing(True)) == config_hash(Smoothing(True, True))
    assert config_hash(Smoothing(True, False)) == config_hash({"filtered": True})
    assert config_hash(Smoothing(False)) == config_hash({"filtered": False}) == config_hash(Smoothing(False, False))
    assert config_hash(Smoothing(True)) != config_hash(Smoothing(True, False))
    assert hash_view({"nested": Smoothing(True)}) == {"nested": {"filtered": True, "sharp_edges": True}}


def test_stage_configs_built_with_hash_view_keep_old_hashes() -> None:
    """Pipeline stages hash mappings such as {"seg": cfg, "arm": ...}: built with hash_view, a new option at
    its default leaves them alone; built with to_dict it would not (the pipeline must not do that)."""
    import inspect
    import re

    from styleseg.pipeline import arm_stages, experiment
    from styleseg.seg.train import SegTrainConfig

    assert config_hash({"seg": hash_view(OuterV2()), "arm": "a"}) == config_hash({"seg": to_dict(Outer()), "arm": "a"})
    assert config_hash({"seg": to_dict(OuterV2()), "arm": "a"}) != config_hash({"seg": to_dict(Outer()), "arm": "a"})
    cfg = SegTrainConfig()
    import dataclasses

    later = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("hash_neutral")}
    assert {"position", "consistency_weight", "val_slices"} <= later  # options added after the first runs
    old = {k: v for k, v in to_dict(cfg).items() if k not in later}
    assert config_hash({"seg": hash_view(cfg)}) == config_hash({"seg": old})
    src = inspect.getsource(experiment) + inspect.getsource(arm_stages)
    assert not re.search(r"_stage\([^\n]*to_dict\(", src), "a pipeline stage hashes to_dict(...): use hash_view"


def test_round_trip_and_hash() -> None:
    cfg = from_dict(Outer, {"steps": 7})
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert config_hash(cfg) == config_hash(from_dict(Outer, {"steps": 7}))
    assert config_hash(cfg) != config_hash(from_dict(Outer, {"steps": 8}))
    assert config_hash(cfg, extra=["a"]) != config_hash(cfg, extra=["b"])


def test_preset_names() -> None:
    assert check_preset("quick") == "quick"
    with pytest.raises(ConfigError, match="did you mean 'paper'"):
        check_preset("papr")


def test_every_example_experiment_loads_and_resolves():
    """examples/*.toml parse and build every stage config (a typo or a renamed option fails here, not after an
    hour of training); data paths are only checked when a run starts."""
    from pathlib import Path

    from styleseg.pipeline import load_experiment

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))
    assert len(examples) >= 5
    for p in examples:
        cfg = load_experiment(p)
        assert cfg.arms, p
    pos = load_experiment(examples[0].with_name("real-ct-position-oracle.toml"))
    assert pos.seg_config().position and set(pos.arms) == {"baseline", "oracle", "denoise"}


def test_a_sectioned_config_hashes_its_flat_view() -> None:
    """GeneratorConfig in sections hashes the flat mapping of its options (so its hashes were those of the flat
    dataclass it replaced, and an option moved between sections does not retrain finished runs); flat and
    sectioned TOML build the same config."""
    import dataclasses

    from styleseg.config import resolve
    from styleseg.style.train import GeneratorArch, GeneratorConfig, GeneratorLossConfig, GeneratorOptim

    cfg = GeneratorConfig.preset("paper")
    sections = {"arch": cfg.arch.hash_resolved(), "loss": cfg.loss, "optim": cfg.optim}
    flat = {f.name: getattr(sections[sec], f.name)
            for sec, cls in (("arch", GeneratorArch), ("loss", GeneratorLossConfig), ("optim", GeneratorOptim))
            for f in dataclasses.fields(cls)
            if not (f.metadata.get("hash_neutral") and getattr(sections[sec], f.name) == f.default)}
    assert config_hash(cfg) == config_hash({**flat, "vgg_weights": cfg.vgg_weights})
    flat_toml = GeneratorConfig.from_flat(steps=60, image_input=True, source_skip=True, source_lowpass="segment",
                                          seed=3)
    sectioned = resolve(GeneratorConfig, "quick", {"optim": {"steps": 60, "seed": 3}, "arch": {"image_input": True}})
    assert sectioned == flat_toml and config_hash(sectioned) == config_hash(flat_toml)
    with pytest.raises(ConfigError, match="given twice"):
        resolve(GeneratorConfig, "quick", {"steps": 3, "optim": {"steps": 4}})


def test_resolve_is_preset_then_overrides_in_order() -> None:
    from styleseg.config import given, resolve
    from styleseg.seg.train import SegTrainConfig

    cfg = resolve(SegTrainConfig, "paper", {"epochs": 3}, given(epochs=None, lr=0.01), where="t.toml [train_seg]")
    assert (cfg.epochs, cfg.lr, cfg.base_channels) == (3, 0.01, 64)  # paper preset, then the two overrides
    with pytest.raises(ConfigError, match=r"t.toml \[train_seg\]: unknown key 'epoch'; did you mean 'epochs'"):
        resolve(SegTrainConfig, "quick", {"epoch": 3}, where="t.toml [train_seg]")
    for bad in ({"lr": -1.0}, {"crop": 0}, {"steps_per_epoch": -2}, {"batch_size": 0}, {"lr": float("nan")}):
        with pytest.raises(ConfigError):
            resolve(SegTrainConfig, "quick", bad)
