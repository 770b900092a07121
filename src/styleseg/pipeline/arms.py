"""The comparison arms as data: one :class:`Arm` entry per arm, read by the stage code, which never names one.

An arm says what its U-Net trains on (``train_on``: the source, an augmented dataset, the oracle's re-imaged
source), which intensity transform its training crops get (``transform``, a key of :data:`TRANSFORMS`), how
its U-Net differs from the preset (``seg_changes``), whether it reuses another arm's model instead of training
(``reuses``) or fine-tunes it (``starts_from``, for a share ``budget`` of the run's epochs at ``lr_scale`` times its
learning rate) and what it does to the test images first (``test_time``, a key of :data:`TEST_TIME`). The
builders of transforms take an :class:`ArmContext`, which gives them the run's unlabelled target slices.
Adding an arm is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

#: the datasets an arm can train on, and the stage that makes each (besides data and split)
TRAINING_DATASETS: dict[str, str | None] = {"source": None, "aug_separate": "augment",
                                            "aug_conditional": "augment_cond", "oracle": "oracle_data",
                                            "physics": "physics_data"}


@dataclass(frozen=True)
class Arm:
    """One comparison arm (see the module docstring)."""

    name: str
    title: str
    train_on: tuple[str, ...] = ("source",)
    transform: tuple[str, ...] = ()
    seg_changes: Mapping[str, Any] = field(default_factory=dict)
    reuses: str | None = None
    test_time: str | None = None
    role: str = ""
    #: cyclic training (the paper's future work): this many rounds of pseudo-labelling the target's style pool
    #: with the previous round's model (the first round: ``rounds_from``'s) and retraining on the training data
    #: plus the confident pseudo-labels; with ``starts_from``, each round fine-tunes that arm's model
    rounds: int = 0
    rounds_from: str | None = None
    #: fine-tuning: the U-Net starts from the weights of this arm's model (same seed, trained first) and trains
    #: ``budget`` of the run's epochs at ``lr_scale`` times its learning rate
    starts_from: str | None = None
    budget: float = 1.0
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        bad = [d for d in self.train_on if d not in TRAINING_DATASETS]
        if bad:
            raise ValueError(f"arm {self.name}: unknown training dataset(s) {bad}")
        bad = [t for t in self.transform if t not in TRANSFORMS]
        if bad:
            raise ValueError(f"arm {self.name}: unknown transform(s) {bad}")
        if self.rounds and not self.rounds_from:
            raise ValueError(f"arm {self.name}: cyclic rounds need the arm they start from (rounds_from)")
        if self.starts_from == self.name or not 0 < self.budget <= 1 or not self.lr_scale > 0:
            raise ValueError(f"arm {self.name}: starts_from must be another arm, 0 < budget <= 1, lr_scale > 0")
        if self.test_time is not None and self.test_time not in TEST_TIME:
            raise ValueError(f"arm {self.name}: unknown test-time step {self.test_time!r}")

    @property
    def trains(self) -> bool:
        return self.reuses is None

    @property
    def model_arm(self) -> str:
        """The arm whose model this arm applies."""
        return self.reuses or self.name

    def budgeted(self, cfg: Any) -> Any:
        """U-Net settings ``cfg`` (a SegTrainConfig) with the arm's budget and learning-rate scale applied."""
        import dataclasses

        if self.budget == 1 and self.lr_scale == 1:
            return cfg
        return dataclasses.replace(cfg, epochs=max(1, round(cfg.epochs * self.budget)), lr=cfg.lr * self.lr_scale)

    def upstream(self) -> list[str]:
        """The stages its training reads from."""
        return ["data", "split"] + [s for d in self.train_on if (s := TRAINING_DATASETS[d]) is not None]

    def build_transform(self, ctx: ArmContext) -> Callable | None:
        """The arm's crop transform (its transforms in order), or None."""
        steps = [TRANSFORMS[t](ctx) for t in self.transform]
        if not steps:
            return None
        return steps[0] if len(steps) == 1 else Compose(tuple(steps))


class ArmContext(Protocol):
    """What transform builders may ask of a run: unlabelled slices of the target's style pool and of the source."""

    def pool_slices(self) -> list[np.ndarray]: ...

    def source_slices(self) -> list[np.ndarray]: ...


def _intensity(ctx: ArmContext) -> Callable:
    from styleseg.data.domain import IntensityAugment

    return IntensityAugment()


def _histmatch(ctx: ArmContext) -> Callable:
    from styleseg.data.domain import HistogramMatch

    return HistogramMatch(ctx.pool_slices())


def _fda(ctx: ArmContext) -> Callable:
    from styleseg.data.domain import FDA

    return FDA(ctx.pool_slices())


def _denoiser(ctx: ArmContext) -> Callable:
    """Denoiser tuned on style-pool slices to bring them to the source's soft-tissue noise level."""
    from styleseg.data.domain import tune_denoiser

    return tune_denoiser(ctx.pool_slices(), ctx.source_slices())


@dataclass(frozen=True)
class Compose:
    """Crop transforms applied in order, each with the same generator (picklable, for DDP workers)."""

    steps: tuple[Callable, ...]

    def __call__(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.steps:
            hu = t(hu, rng)
        return hu


#: training-crop transforms ``transform(hu_crop, rng) -> hu_crop``, by name
TRANSFORMS: dict[str, Callable[[ArmContext], Callable]] = {"intensity": _intensity, "histmatch": _histmatch,
                                                           "fda": _fda}
#: test-time transforms of the target slices ``transform(hu_slice) -> hu_slice``, by name
TEST_TIME: dict[str, Callable[[ArmContext], Callable]] = {"denoise": _denoiser}


#: the strong reference recipe: position channels (a crop knows where it is) and nnU-Net's intensity augmentation
REFERENCE = {"seg_changes": {"position": True}, "transform": ("intensity",)}

ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("baseline", "U-Net 1: source only (baseline)", role="baseline"),
    Arm("intensity", "intensity augmentation (nnU-Net-like)", transform=("intensity",)),
    Arm("histmatch", "histogram matching to target", transform=("histmatch",)),
    Arm("fda", "Fourier domain adaptation", transform=("fda",)),
    Arm("styleseg", "U-Net 2: styleseg, n separate generators", train_on=("aug_separate",)),
    Arm("styleseg_cond", "styleseg, one conditional generator", train_on=("aug_conditional",)),
    Arm("oracle", "oracle: source anatomy with true target texture", train_on=("oracle",), role="oracle"),
    Arm("denoise", "denoise target, then baseline", reuses="baseline", test_time="denoise"),
    Arm("lowres", "low resolution (4x downsampled)", seg_changes={"downsample": 4}),
    Arm("position", "source only, U-Net with position channels", seg_changes={"position": True}),
    # the strong reference and the augmentation arms layered on it
    Arm("reference", "reference: source only, position channels + nnU-Net intensity augmentation", role="reference",
        **REFERENCE),
    Arm("styleseg_ref", "styleseg (separate generators) on the reference recipe", train_on=("aug_separate",),
        **REFERENCE),
    Arm("styleseg_cond_ref", "styleseg (conditional generator) on the reference recipe",
        train_on=("aug_conditional",), **REFERENCE),
    Arm("styleseg_mix_ref", "styleseg on the reference recipe, half of the training samples from the real source",
        train_on=("aug_separate",), transform=("intensity",), seg_changes={"position": True, "real_share": 0.5}),
    Arm("consistency_ref", "styleseg + paired consistency of source and restyled crops, on the reference recipe",
        train_on=("aug_separate",), transform=("intensity",),
        seg_changes={"position": True, "consistency_weight": 1.0}),
    Arm("cyclic_ref", "styleseg + cyclic pseudo-labels of the target (2 rounds), on the reference recipe",
        train_on=("aug_separate",), rounds=2, rounds_from="styleseg_ref", **REFERENCE),
    # fine-tuning the reference's U-Net for a third of the budget at a third of the rate: with styleseg's data, and
    # (the control that tells the data from the extra steps) with the reference's own
    Arm("reference_ft", "reference, fine-tuned further on the source (the control of styleseg_ft_ref)",
        starts_from="reference", budget=1 / 3, lr_scale=1 / 3, **REFERENCE),
    Arm("styleseg_ft_ref", "styleseg fine-tuning the reference's U-Net (a third of the budget, a third of the rate)",
        train_on=("aug_separate",), starts_from="reference", budget=1 / 3, lr_scale=1 / 3, **REFERENCE),
    Arm("cyclic_ft_ref", "cyclic pseudo-labels of the target (2 rounds, the first from the reference), each round "
        "fine-tuning the reference's U-Net on styleseg's data", train_on=("aug_separate",), rounds=2,
        rounds_from="reference", starts_from="reference", budget=1 / 3, lr_scale=1 / 3, **REFERENCE),
    Arm("consistency_ft_ref", "styleseg + paired consistency fine-tuning the reference's U-Net, as styleseg_ft_ref",
        train_on=("aug_separate",), starts_from="reference", budget=1 / 3, lr_scale=1 / 3, transform=("intensity",),
        seg_changes={"position": True, "consistency_weight": 1.0}),
    Arm("physics_ft_ref", "physics randomisation fine-tuning the reference's U-Net, as styleseg_ft_ref",
        train_on=("physics",), starts_from="reference", budget=1 / 3, lr_scale=1 / 3, **REFERENCE),
    Arm("physics_ref", "physics randomisation: source re-imaged at random doses and kernels, on the reference",
        train_on=("physics",), **REFERENCE),
    Arm("oracle_ref", "oracle (true target texture) on the reference recipe", train_on=("oracle",), role="oracle",
        **REFERENCE),
    Arm("oracle_ft_ref", "oracle (true target texture) fine-tuning the reference's U-Net, as styleseg_ft_ref",
        train_on=("oracle",), role="oracle", starts_from="reference", budget=1 / 3, lr_scale=1 / 3, **REFERENCE),
)}
