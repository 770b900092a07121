"""The generator stage's configuration (:mod:`styleseg.style.train` trains with it): ``[generators]`` of an
experiment file, flat or in three sections, ``arch`` (what the generator is), ``loss`` (what it minimises) and
``optim`` (how). ``styleseg.style.train`` re-exports every class here, the import path documented elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from styleseg.config import check_preset, hash_view, new_option, to_dict
from styleseg.errors import ConfigError
from styleseg.style.generator import SOURCE_LOWPASS
from styleseg.style.losses import GeneratorLoss
from styleseg.style.vgg import LAYER_NAMES

# --- the sections -------------------------------------------------------------------------------------

#: the presets' generator: the source slice is read and passes through low-passed within each segment of its label
#: map, at each segment's own mean (source_means follows source_skip), so the style slice changes the texture and
#: the anatomy a label map lacks (bone, vessels, airways) stays: the generator of every real-CT comparison in
#: BENCHMARKS.md; the paper's label-map-only generator lost that anatomy on real CT (docs/style.md)
RECOMMENDED_ARCH: dict[str, Any] = {"image_input": True, "source_skip": True, "source_lowpass": "segment"}
#: the paper's label-map-only generator over a preset (what `train-styles --label-maps-only` sets)
PAPER_ARCH: dict[str, Any] = {"image_input": False, "source_skip": False}


@dataclass(frozen=True)
class GeneratorArch:
    """What the generator is (:class:`styleseg.style.generator.GeneratorSpec` is built from it)."""

    base: int = 16
    n_res: int = 3
    output: str = "residual"
    noise_kernel: int = 11
    noise_init: str = "nps"
    train_texture: bool = False
    image_input: bool = False
    # with image_input: the source slice passes through, the network changes only its texture (generator.py)
    source_skip: bool = new_option(False)
    source_sigma: float = new_option(1.0)  # px: low-pass of the source that passes through
    # "segment": that low-pass within each segment of the label map, so outlines pass through sharp (generator.py)
    source_lowpass: str = new_option("gaussian")
    # with source_skip: every segment keeps the source's mean, the style gives the texture only. None (unset): on
    # wherever source_skip is (keeps_source_means); false: the style slice's segment means
    source_means: bool | None = new_option(None)
    bone_hu: float = 300.0  # beyond the paper: a "bone" segment derived from HU inside the body (0: off)
    # the bone segment also takes the body pixels >= bone_low_hu connected to it (cancellous bone), and with
    # bone_source its inside is the source's bone (low-passed, at the style's mean) with the style's noise
    bone_low_hu: float = 150.0
    bone_source: bool = True
    conditional: bool = False

    @property
    def keeps_source_means(self) -> bool:
        """Whether every segment keeps the source slice's mean HU: ``source_means``, or where it is unset,
        ``source_skip`` (the style slice's means drew structures the target does not have; docs/style.md)."""
        return self.source_skip if self.source_means is None else self.source_means

    def hash_resolved(self) -> GeneratorArch:
        """What the stage hash sees (config.hash_view): source_means at the value it takes, true or unset, so an
        unset option and an explicit ``true`` hash alike, and ``false`` hashes as before the option existed;
        source_lowpass only where the source passes through (source_skip), the only place it acts."""
        return dataclasses.replace(self, source_means=True if self.keeps_source_means else None,
                                   source_lowpass=self.source_lowpass if self.source_skip else "gaussian")

    def __post_init__(self) -> None:
        if self.output not in ("residual", "tanh"):
            raise ConfigError(f"[generators].output must be 'residual' or 'tanh', got {self.output!r}")
        if self.source_means and not self.source_skip:
            raise ConfigError("[generators].source_means = true needs source_skip = true (the slice passing through)")
        if self.source_skip and not (self.image_input and self.output == "residual"):
            raise ConfigError("[generators].source_skip = true needs image_input = true (the source slice is what "
                              "passes through) and output = 'residual'; for the paper's label-map generator set "
                              "image_input = false and source_skip = false")
        if self.source_lowpass not in SOURCE_LOWPASS:
            raise ConfigError(f"[generators].source_lowpass must be {' or '.join(map(repr, SOURCE_LOWPASS))}, "
                              f"got {self.source_lowpass!r}")
        if self.noise_init not in ("nps", "white"):
            raise ConfigError(f"[generators].noise_init must be 'nps' or 'white', got {self.noise_init!r}")
        if self.noise_kernel < 1 or self.noise_kernel % 2 == 0:
            raise ConfigError("[generators].noise_kernel must be a positive odd number")
        if self.base < 1 or self.n_res < 0 or self.source_sigma < 0 or self.bone_hu < 0 or self.bone_low_hu < 0:
            raise ConfigError("[generators]: base >= 1, n_res >= 0, and source_sigma, bone_hu, bone_low_hu >= 0 are "
                              "required")
        if self.bone_low_hu > self.bone_hu > 0:
            raise ConfigError(f"[generators].bone_low_hu ({self.bone_low_hu}) must not exceed bone_hu ({self.bone_hu})")


@dataclass(frozen=True)
class GeneratorLossConfig:
    """The weights and VGG layers of :class:`~styleseg.style.losses.GeneratorLoss`."""

    alpha: float = 1.0
    beta: float = 10.0
    gamma: float = 10.0
    nps_weight: float = 100.0  # beyond the paper: the NPS texture term (losses.nps_texture_loss); 0: off
    nps_roi: int = 24
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1")
    style_weights: tuple[float, ...] = (1.0, 1.0)
    content_layers: tuple[str, ...] = ("relu2_1",)
    content_match_means: bool = True
    fill_absent: bool = True  # segments a style slice lacks: borrowed texture, the source's mean (targets.fill_absent)

    def __post_init__(self) -> None:
        for n in (*self.style_layers, *self.content_layers):
            if n not in LAYER_NAMES:
                raise ConfigError(f"[generators]: unknown VGG layer {n!r}; valid: {', '.join(LAYER_NAMES)}")
        if len(self.style_weights) != len(self.style_layers):
            raise ConfigError("[generators]: style_weights needs one weight per style layer")
        if min(self.alpha, self.beta, self.gamma, self.nps_weight) < 0 or self.nps_roi < 8:
            raise ConfigError("[generators]: alpha, beta, gamma and nps_weight must be >= 0 and nps_roi >= 8")

    def loss(self) -> GeneratorLoss:
        return GeneratorLoss(self.alpha, self.beta, self.gamma, self.nps_weight, self.content_layers,
                             self.style_layers, self.style_weights)


@dataclass(frozen=True)
class GeneratorOptim:
    """How the generator is optimised. ``steps`` is per separate generator; the conditional generator runs
    ``conditional_steps`` (0: 2 x ``steps``) for all styles together. ``epochs`` > 0 overrides ``steps`` with
    epochs x (number of source slices) / batch."""

    crop: int = 64
    steps: int = 100
    epochs: int = 0
    conditional_steps: int = 0
    batch: int = 2
    lr: float = 1e-3
    bf16: bool = False
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crop < 16 or self.crop % 4:
            raise ConfigError("[generators].crop must be a multiple of 4 and >= 16")
        if self.steps < 1 or self.batch < 1 or not self.lr > 0:
            raise ConfigError("[generators]: steps, batch and lr must be positive")
        if self.epochs < 0 or self.conditional_steps < 0 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ConfigError("[generators]: epochs and conditional_steps must be >= 0, log_every and "
                              "checkpoint_every >= 1")


@dataclass(frozen=True)
class GeneratorConfig:
    """Generator training settings in three sections: ``arch`` (what the generator is), ``loss`` (what it
    minimises) and ``optim`` (how). TOML takes them flat (``[generators] steps = 60``) or by section
    (``[generators.optim] steps = 60``)."""

    arch: GeneratorArch = field(default_factory=GeneratorArch)
    loss: GeneratorLossConfig = field(default_factory=GeneratorLossConfig)
    optim: GeneratorOptim = field(default_factory=GeneratorOptim)
    vgg_weights: str = ""

    @classmethod
    def flat_keys(cls) -> dict[str, str]:
        """{option: section} for the flat spelling of every sectioned option."""
        return {f.name: sec for sec, tp in (("arch", GeneratorArch), ("loss", GeneratorLossConfig),
                                            ("optim", GeneratorOptim)) for f in dataclasses.fields(tp)}

    @classmethod
    def from_flat(cls, **options: Any) -> GeneratorConfig:
        """A config from flat options (``GeneratorConfig.from_flat(steps=2, base=4)``), the rest at defaults."""
        from styleseg.config import resolve

        return resolve(cls, None, options, where="generators")

    def replace(self, **options: Any) -> GeneratorConfig:
        """A copy with flat options changed (``cfg.replace(conditional=True)``)."""
        from styleseg.config import resolve

        return resolve(GeneratorConfig, None, to_dict(self), options, where="generators")

    def hash_fields(self) -> dict[str, Any]:
        """The flat view its stage and checkpoint hashes use (the same as before the sections existed)."""
        return {**hash_view(self.arch), **hash_view(self.loss), **hash_view(self.optim),
                "vgg_weights": self.vgg_weights}

    @classmethod
    def preset(cls, name: str) -> GeneratorConfig:
        """Both presets build the generator README's "Which arm to use" recommends (:data:`RECOMMENDED_ARCH`);
        the paper's label-map-only generator is ``image_input = false, source_skip = false`` (the dataclass
        defaults). "quick": minutes on 2 CPU cores (crops of 64, VGG layers up to relu2_1, a small net); "paper": the
        paper's setting on a GPU (its 512 x 512 slices at native spacing, 100 epochs, Gatys' layers, bf16),
        trained on 256-px crops of those slices in batches of 16: the same pixels per step as 4 whole slices,
        a quarter of the cost per slice visit (the texture lives at native spacing and Gram statistics are
        area averages, so crops carry the style; the generator is applied to whole slices). ``crop = 512``
        trains on whole slices, as the paper did."""
        check_preset(name)
        if name == "quick":
            return cls(GeneratorArch(**RECOMMENDED_ARCH))
        return cls(GeneratorArch(base=32, n_res=5, **RECOMMENDED_ARCH),
                   GeneratorLossConfig(style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
                                       style_weights=(1.0, 1.0, 1.0, 1.0, 1.0), content_layers=("relu4_2",)),
                   GeneratorOptim(crop=256, epochs=100, batch=16, lr=1e-3, bf16=True, log_every=50,
                                  checkpoint_every=500))
