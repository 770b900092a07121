"""Style generator: one-hot label map (+ noise) -> one CT slice in HU (paper sec. 2.2; Johnson et al. 2016).

Architecture (Johnson et al.'s feed-forward transformation network, fully convolutional):
``c7s1-w, d2w, d4w, R x res(4w), u2w, uw, [concat noise] c3s1-w, c7s1-1`` with instance norm and ReLU;
``d`` = stride-2 conv, ``u`` = nearest 2x upsampling + 3x3 conv (no checkerboard artefacts). Inputs are the
one-hot source label map (K channels) and a unit Gaussian noise channel, optionally the source slice in
the soft-tissue window (``image_input``, beyond the paper). The noise enters both at the input and again
at full resolution just before the output convolutions, because CT noise texture lives at the native
pixel scale and would otherwise have to pass through the 4x-downsampled bottleneck.

Output in HU through ``centre + half * tanh(z)`` spanning [-1024, 1500] HU. Why HU and not the [0, 1]
soft-tissue window: the paper's losses look at W400/L40 only, but a segmenter reads the whole HU range
(lungs at -850 HU, bone at +700 HU); a generator with a windowed output would clip lungs to -160 HU and
bone to 240 HU. The VGG losses window the HU output (as the paper does), and a per-segment mean-HU term
(:func:`styleseg.style.losses.segment_mean_loss`) anchors the segments outside the window.

Conditional variant (beyond the paper): with ``n_styles > 1`` every instance norm is a conditional
instance norm (Dumoulin et al. 2017): the style index selects a per-style scale and shift, so one network
renders all n styles.

The network works at native pixel spacing on any size that is a multiple of 4 (other sizes are
reflect-padded and cropped back); train on crops, apply to whole slices. Never resample.

Output formulations (``GeneratorSpec.output``):

- ``"residual"`` (default since the quality fix): ``HU = P[style, label] + r - mean_seg(r)`` with
  ``r = 100 HU * net(label, noise) + a[style, label] * (h_style * noise)``. ``P`` are the style slice's
  per-segment mean HU (a fixed intensity prior), ``h_style`` a learned per-style k x k colouring filter of
  the full-resolution unit white noise and ``a`` a learned per-(style, segment) amplitude: the physical
  model of CT noise texture (a linear, shift-invariant filter of white quantum noise, NPS = |H(f)|^2 x
  white; ICRU 87). Subtracting each segment's mean of ``r`` (over the slice or crop) makes every
  segment's mean exactly the style slice's, whatever the losses do; the encoder-decoder is left with the
  anatomy-dependent part (edges, blur). The filter and amplitudes are initialised from the style slice
  (``init_texture``; :func:`styleseg.style.train.texture_init`) and refined by the VGG losses.
- ``"tanh"`` (the first version; still loadable): ``HU = centre + half * tanh(z + prior)``.

``source_skip`` (residual output with ``image_input``; beyond the paper): the source slice itself passes
through, ``HU = S + (P[style, label] - mean_seg(S)) + r - mean_seg(r)``: every segment still gets exactly the
style slice's mean (with ``source_means``: ``HU = S + r - mean_seg(r)``, the source's own mean, the style giving
only the texture), but the anatomy inside a segment that the label map does not draw (vessels, the
vertebra, the oesophageal lumen) is the source's instead of being redrawn, and the network learns only the
change of texture. ``S`` is the source low-passed by a Gaussian of ``source_sigma`` pixels, so that the
source's own noise texture does not pass through with it (the style's noise is added by the colouring filter).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from styleseg.errors import InputError
from styleseg.labels import LabelSchema

HU_MIN, HU_MAX = -1024.0, 1500.0


@dataclass(frozen=True)
class GeneratorSpec:
    """The architecture (written into model.json)."""

    num_classes: int
    base: int = 32
    n_res: int = 5
    n_styles: int = 1
    conditional: bool = False
    image_input: bool = False
    hu_min: float = HU_MIN
    hu_max: float = HU_MAX
    output: str = "residual"
    noise_kernel: int = 11
    content_scale: float = 100.0
    # a derived "bone" segment (the last class, ``num_classes - 1``): pixels of the schema's body class whose
    # smoothed HU is >= bone_hu (0: none); see :func:`add_bone_segment`
    bone_hu: float = 0.0
    body_value: int = -1
    source_skip: bool = False
    source_sigma: float = 1.0  # px: Gaussian low-pass of the source that passes through (its own noise removed)
    # "gaussian": across the whole slice; "segment": within each segment of the label map (segment_blur), so
    # that an outline between segments (skin and air, lung and mediastinum) passes through sharp
    source_lowpass: str = "gaussian"
    # the bone segment grows from pixels >= bone_hu into connected ones >= bone_low_hu (0: no growing), and with
    # bone_source it is the source's (low-passed) bone, its level and structure, with the style's noise;
    # generator folders written before either existed have neither
    bone_low_hu: float = 0.0
    bone_source: bool = False
    # with source_skip: every segment keeps the source slice's own mean instead of the style's (texture only)
    source_means: bool = False

    def __post_init__(self) -> None:
        if self.output not in ("residual", "tanh"):
            raise ValueError(f"output must be 'residual' or 'tanh', got {self.output!r}")
        if self.source_skip and not (self.image_input and self.output == "residual"):
            raise ValueError("source_skip needs image_input=True and the residual output")
        if self.source_means and not self.source_skip:
            raise ValueError("source_means needs source_skip")
        if self.source_sigma < 0:
            raise ValueError("source_sigma must be >= 0")
        if self.source_lowpass not in SOURCE_LOWPASS:
            raise ValueError(f"source_lowpass must be one of {', '.join(SOURCE_LOWPASS)}, got {self.source_lowpass!r}")
        if self.bone_source and self.bone_hu <= 0:
            raise ValueError("bone_source needs a bone segment (bone_hu > 0)")
        if self.noise_kernel < 1 or self.noise_kernel % 2 == 0:
            raise ValueError("noise_kernel must be a positive odd number")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GeneratorSpec:
        d = dict(d)
        d.setdefault("output", "tanh")  # folders written before the residual formulation existed
        return cls(**d)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian low-pass of (B, 1, H, W) with reflect padding (``sigma`` in pixels; 0: unchanged)."""
    if sigma <= 0:
        return x
    r = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.reshape(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.reshape(1, 1, -1, 1))


def segment_blur(x: torch.Tensor, onehot: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass of (B, 1, H, W) within each segment of ``onehot`` (B, K, H, W): a normalised
    convolution per segment, so a pixel is averaged with pixels of its own segment only. A Gaussian across an
    outline between segments of very different HU (skin and air: ~900 HU) leaves a halo a pixel or two wide
    on both sides; this keeps the outline where the label map has it. ``sigma`` 0: unchanged."""
    if sigma <= 0:
        return x
    b, k, h, w = onehot.shape
    m = onehot.to(x.dtype).reshape(b * k, 1, h, w)
    num = gaussian_blur(m * x.repeat_interleave(k, dim=0), sigma)
    den = gaussian_blur(m, sigma)
    return ((num / den.clamp_min(1e-6)) * m).reshape(b, k, h, w).sum(1, keepdim=True)


SOURCE_LOWPASS = ("gaussian", "segment")
BONE_SMOOTH_PX = 1.5
BONE_SEED_SMOOTH_PX = 0.7
BONE_MIN_PIXELS = 8
#: px: low-pass of the source's bone that passes through (bone_source): it removes the source's own noise
#: but keeps a thin cortex above 300 HU (at 1 px, a quarter of a real slice's > 300 HU pixels fall below)
BONE_SOURCE_SIGMA_PX = 0.5


def add_bone_segment(label: np.ndarray, hu: np.ndarray, body_value: int, bone_hu: float, bone_value: int,
                     low_hu: float = 0.0) -> np.ndarray:
    """Label maps (..., H, W) with bone carved out of the body class as ``bone_value`` (beyond the paper).

    Label maps say nothing about bone, so a generator fed only them cannot draw ribs, sternum or vertebrae,
    and a U-Net trained on its slices meets a spinal cord with no vertebra around it. Bone is derived from
    the slice itself, as the body is, on the slice Gaussian-smoothed at 1.5 px (so low-dose noise does not make
    speckles): body pixels >= ``bone_hu``; with ``low_hu`` > 0 (hysteresis) instead the body pixels >= ``low_hu``
    connected to a seed >= ``bone_hu`` at 0.7 px of smoothing (so the thin cortex of a rib seeds its bone), in
    connected groups of >= 8 pixels. The growing is what keeps the
    cancellous bone of a vertebral body (150-300 HU) in the bone segment: above the cortex threshold alone it
    is body, and a generated slice draws the vertebral body at the body's mean, a dark hole with a bright rim.
    Derived per 2D slice; the returned label maps are for the generator only (datasets keep the schema's)."""
    from scipy import ndimage as ndi

    label = np.asarray(label)
    hu = np.asarray(hu, np.float32)
    if label.shape != hu.shape:
        raise ValueError(f"label {label.shape} and image {hu.shape} differ in shape")
    out = label.astype(np.uint8).copy()
    flat_l, flat_h = out.reshape(-1, *out.shape[-2:]), hu.reshape(-1, *hu.shape[-2:])
    for i in range(flat_l.shape[0]):
        body = flat_l[i] == body_value
        if not body.any():
            continue
        smooth = ndi.gaussian_filter(flat_h[i], BONE_SMOOTH_PX)
        bone = body & (smooth >= bone_hu)
        if low_hu > 0:  # seeds at less smoothing, so thin cortex (ribs) seeds its bone too
            seeds = body & (ndi.gaussian_filter(flat_h[i], BONE_SEED_SMOOTH_PX) >= bone_hu)
            grown, _ = ndi.label(body & ((smooth >= low_hu) | seeds))
            ids = np.unique(grown[seeds])
            bone = np.isin(grown, ids[ids > 0])
        comp, n = ndi.label(bone)
        if n:
            sizes = np.bincount(comp.ravel())
            keep = sizes >= BONE_MIN_PIXELS
            keep[0] = False
            bone = keep[comp]
        flat_l[i][bone] = bone_value
    return out


class StyleNorm(nn.Module):
    """Instance norm with a learned affine; conditional (per-style scale/shift) when ``n_styles > 1``."""

    def __init__(self, channels: int, n_styles: int = 1):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.scale = nn.Parameter(torch.ones(n_styles, channels))
        self.shift = nn.Parameter(torch.zeros(n_styles, channels))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return x * self.scale[style][:, :, None, None] + self.shift[style][:, :, None, None]


class ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, n_styles: int, stride: int = 1, up: bool = False,
                 act: bool = True):
        super().__init__()
        self.up, self.act, self.pad = up, act, k // 2
        self.conv = nn.Conv2d(cin, cout, k, stride=stride)
        self.norm = StyleNorm(cout, n_styles)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.norm(self.conv(F.pad(x, (self.pad,) * 4, mode="reflect")), style)
        return F.relu(x) if self.act else x


class ResBlock(nn.Module):
    def __init__(self, c: int, n_styles: int):
        super().__init__()
        self.a = ConvNormAct(c, c, 3, n_styles)
        self.b = ConvNormAct(c, c, 3, n_styles, act=False)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x, style), style)


class StyleGenerator(nn.Module):
    """Label map (B, H, W) ints + noise -> HU (B, 1, H, W). See the module docstring."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        w, s = spec.base, spec.n_styles
        cin = spec.num_classes + 1 + (1 if spec.image_input else 0)
        self.enc = nn.ModuleList([ConvNormAct(cin, w, 7, s), ConvNormAct(w, 2 * w, 3, s, stride=2),
                                  ConvNormAct(2 * w, 4 * w, 3, s, stride=2)])
        self.res = nn.ModuleList([ResBlock(4 * w, s) for _ in range(spec.n_res)])
        self.dec = nn.ModuleList([ConvNormAct(4 * w, 2 * w, 3, s, up=True), ConvNormAct(2 * w, w, 3, s, up=True),
                                  ConvNormAct(w + 1, w, 3, s)])
        self.out = nn.Conv2d(w, 1, 7)
        nn.init.zeros_(self.out.weight)  # start exactly at the intensity prior; texture is learned on top
        nn.init.zeros_(self.out.bias)
        # per-(style, segment) offset of the pre-tanh output: an intensity prior initialised from the style
        # slice's segment means (init_prior), so training starts at the right HU and learns texture
        self.centre = (spec.hu_max + spec.hu_min) / 2.0
        self.half = (spec.hu_max - spec.hu_min) / 2.0
        s, k, nk = spec.n_styles, spec.num_classes, spec.noise_kernel
        if spec.output == "tanh":
            self.prior = nn.Parameter(torch.zeros(s, k))
        else:
            # fixed per-(style, segment) mean HU; learned colouring filter (delta = white) and amplitudes
            self.register_buffer("prior_hu", torch.zeros(s, k))
            delta = torch.zeros(s, 1, nk, nk)
            delta[:, 0, nk // 2, nk // 2] = 1.0
            self.noise_filter = nn.Parameter(delta)
            self.noise_amp = nn.Parameter(torch.full((s, k), 20.0))

    @torch.no_grad()
    def init_prior(self, means: torch.Tensor, present: torch.Tensor) -> None:
        """Set the intensity prior from per-style segment means in HU (n_styles, K); absent segments get 0
        (residual) or the window centre (tanh)."""
        if self.spec.output == "residual":
            self.prior_hu.copy_(torch.where(present, means, torch.zeros_like(means)).to(self.prior_hu))
            return
        y = ((means - self.centre) / self.half).clamp(-0.995, 0.995)
        self.prior.copy_(torch.where(present, torch.atanh(y), torch.zeros_like(y)).to(self.prior))

    @torch.no_grad()
    def init_texture(self, filters: torch.Tensor, amps: torch.Tensor) -> None:
        """Set the colouring filters (n_styles, k, k) (unit-energy, see train.texture_init) and the noise
        amplitudes in HU (n_styles, K) of a residual generator."""
        if self.spec.output != "residual":
            raise ValueError("only a residual generator has a noise colouring filter")
        self.noise_filter.copy_(filters.reshape(self.noise_filter.shape).to(self.noise_filter))
        self.noise_amp.copy_(amps.to(self.noise_amp))

    def colour_noise(self, noise: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Per-sample convolution of the white noise (B, 1, H, W) with its style's filter (grouped conv)."""
        b, _, h, w = noise.shape
        p = self.spec.noise_kernel // 2
        x = F.pad(noise, (p, p, p, p), mode="reflect" if min(h, w) > p else "replicate")
        return F.conv2d(x.reshape(1, b, h + 2 * p, w + 2 * p), self.noise_filter[style].to(x.dtype),
                        groups=b).reshape(b, 1, h, w)

    def make_input(self, label: torch.Tensor, noise: torch.Tensor, source_hu: torch.Tensor | None) -> torch.Tensor:
        onehot = F.one_hot(label.long(), self.spec.num_classes).permute(0, 3, 1, 2).to(noise.dtype)
        parts = [onehot, noise]
        if self.spec.image_input:
            if source_hu is None:
                raise ValueError("this generator takes the source slice as input (image_input=True)")
            parts.append(((source_hu - (40.0 - 200.0)) / 400.0).clamp(0, 1).to(noise.dtype))
        return torch.cat(parts, dim=1)

    def forward(self, label: torch.Tensor, style: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                source_hu: torch.Tensor | None = None) -> torch.Tensor:
        if label.ndim != 3:
            raise ValueError(f"label must be (B, H, W), got {tuple(label.shape)}")
        b, h, w = label.shape
        if int(label.max()) >= self.spec.num_classes or int(label.min()) < 0:
            raise ValueError(f"label values must be in 0..{self.spec.num_classes - 1}")
        if style is None:
            if self.spec.n_styles > 1:
                raise ValueError("a conditional generator needs a style index per batch element")
            style = torch.zeros(b, dtype=torch.long, device=label.device)
        style = style.to(label.device).long().expand(b) if style.ndim == 0 else style.to(label.device).long()
        if int(style.max()) >= self.spec.n_styles or int(style.min()) < 0:
            raise ValueError(f"style index out of range 0..{self.spec.n_styles - 1}")
        dtype = self.out.weight.dtype
        if noise is None:
            noise = torch.randn(b, 1, h, w, device=label.device, dtype=dtype)
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:  # reflect-pad to a multiple of 4 and crop back
            label = F.pad(label[:, None].float(), (0, pw, 0, ph), mode="replicate")[:, 0].long()
            noise = F.pad(noise, (0, pw, 0, ph), mode="reflect")
            if source_hu is not None:
                source_hu = F.pad(source_hu, (0, pw, 0, ph), mode="replicate")
        x = self.make_input(label, noise.to(dtype), source_hu)
        for layer in self.enc:
            x = layer(x, style)
        for blk in self.res:
            x = blk(x, style)
        x = self.dec[0](x, style)
        x = self.dec[1](x, style)
        x = self.dec[2](torch.cat([x, noise.to(x.dtype)], dim=1), style)
        z = self.out(F.pad(x, (3, 3, 3, 3), mode="reflect"))
        if self.spec.output == "tanh":
            z = z + self.prior[style[:, None, None], label.long()][:, None]
            hu = self.centre + self.half * torch.tanh(z)
            return hu[:, :, :h, :w]
        return self._residual_output(z, label, style, noise, source_hu, h, w)

    def _residual_output(self, z: torch.Tensor, label: torch.Tensor, style: torch.Tensor, noise: torch.Tensor,
                         source_hu: torch.Tensor | None, h: int, w: int) -> torch.Tensor:
        """HU of the residual formulation (see the module docstring) from the network's output ``z``."""
        sl = (style[:, None, None], label.long())
        texture = (self.noise_amp[sl][:, None] * self.colour_noise(noise.float(), style))[:, :, :h, :w]
        r, lab_c = self.spec.content_scale * z.float()[:, :, :h, :w], label[:, :h, :w].long()
        bone = None
        if self.spec.bone_source:  # inside bone: the source's structure and the style's noise, no network content
            bone = (lab_c == self.spec.num_classes - 1)[:, None]
            r = torch.where(bone, torch.zeros_like(r), r)
        r = r + texture
        m = F.one_hot(lab_c, self.spec.num_classes).permute(0, 3, 1, 2).to(r.dtype)  # (B, K, h, w)
        seg_mean = (r * m).flatten(2).sum(2) / m.flatten(2).sum(2).clamp_min(1.0)  # (B, K)
        r = r - torch.gather(seg_mean, 1, lab_c.flatten(1)).reshape(r.shape)
        hu = self.prior_hu[style[:, None, None], lab_c][:, None] + r
        if self.spec.source_skip or bone is not None:
            if source_hu is None:
                raise ValueError("this generator passes the source slice's bone through (bone_source): pass the "
                                 "source slice too")
            # the source's anatomy within a segment (every segment with source_skip, else bone only), moved to
            # the style's segment means
            clamped = source_hu.float().clamp(self.spec.hu_min, self.spec.hu_max)
            if self.spec.source_skip:
                if self.spec.source_lowpass == "segment":
                    src = segment_blur(clamped[:, :, :h, :w], m, self.spec.source_sigma)
                else:
                    src = gaussian_blur(clamped, self.spec.source_sigma)[:, :, :h, :w]
                area = m.flatten(2).sum(2).clamp_min(1.0)
                src_mean = (src * m).flatten(2).sum(2) / area
                if self.spec.source_means:  # the source's own level in every segment: only the texture changes
                    hu = r + torch.gather((clamped[:, :, :h, :w] * m).flatten(2).sum(2) / area, 1,
                                          lab_c.flatten(1)).reshape(src.shape)
                hu = hu + src - torch.gather(src_mean, 1, lab_c.flatten(1)).reshape(src.shape)
            if bone is not None:  # bone density is the patient's, not the scanner's: the source's level too
                hu = torch.where(bone, gaussian_blur(clamped, BONE_SOURCE_SIGMA_PX)[:, :, :h, :w] + r, hu)
        return hu.clamp(self.spec.hu_min, self.spec.hu_max)


KIND = "generator"


def save_generator(folder: str | Path, model: StyleGenerator, schema: LabelSchema, styles: list[dict[str, Any]],
                   config: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a generator model folder (model.json + weights.pt) via :func:`styleseg.runs.write_model_folder`.

    ``styles``: one record per style the generator renders (``index`` in the style set, case, slice)."""
    from styleseg.runs import write_model_folder

    mj = {"architecture": {"name": "johnson-resnet-generator", **model.spec.to_json()},
          "schema": schema.to_labels_dict(), "input": "one-hot label map + N(0,1) noise" +
          (" + source slice (W400/L40)" if model.spec.image_input else ""),
          "output": {"unit": "HU", "range": [model.spec.hu_min, model.spec.hu_max]},
          "loss_window": {"centre": 40.0, "width": 400.0}, "styles": styles, "config": config, **(extra or {})}
    return write_model_folder(folder, KIND, mj, model.state_dict())


def load_generator(folder: str | Path, device: str | torch.device = "cpu") -> tuple[StyleGenerator, dict[str, Any]]:
    """Load a generator folder; errors name the file."""
    from styleseg.runs import read_model_folder

    meta, sd = read_model_folder(folder, KIND)
    arch = dict(meta.get("architecture", {}))
    arch.pop("name", None)
    try:
        spec = GeneratorSpec.from_json(arch)
        model = StyleGenerator(spec)
        model.load_state_dict(sd)
    except (TypeError, RuntimeError) as e:
        raise InputError(Path(folder) / "model.json", f"generator architecture and weights do not match ({e})",
                         "retrain the generator with this version of styleseg") from e
    model.eval().to(device)
    return model, meta
