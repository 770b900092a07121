"""The paper's 2D U-Net (Ronneberger et al. 2015, as used by Bhosale et al. 2023).

Encoder: ``depth`` levels of two 3x3 conv + batch norm + ReLU, each followed by 2x2 max pooling;
a bottleneck block; decoder: 2x2 transposed convolution up, concatenation with the skip connection,
two 3x3 conv + BN + ReLU; a 1x1 convolution gives per-class logits. Fully convolutional: trained on
crops, applied to whole slices whose size is a multiple of ``2**depth`` (see :func:`pad_multiple`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetSpec:
    """Architecture of a :class:`UNet` (stored in model.json so a model folder rebuilds it)."""

    in_channels: int = 1
    num_classes: int = 7
    base_channels: int = 32
    depth: int = 4
    max_channels: int = 512

    def channels(self, level: int) -> int:
        return min(self.base_channels * 2**level, self.max_channels)

    def to_json(self) -> dict[str, Any]:
        return {"name": "unet2d", "in_channels": self.in_channels, "num_classes": self.num_classes,
                "base_channels": self.base_channels, "depth": self.depth, "max_channels": self.max_channels}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UNetSpec:
        d = {k: v for k, v in d.items() if k != "name"}
        return cls(**d)


class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> batch norm -> ReLU) layers."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """2D U-Net: (B, in_channels, H, W) -> logits (B, num_classes, H, W); H, W multiples of 2**depth."""

    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.spec = spec
        c = spec.channels
        self.down = nn.ModuleList()
        cin = spec.in_channels
        for level in range(spec.depth):
            self.down.append(ConvBlock(cin, c(level)))
            cin = c(level)
        self.bottleneck = ConvBlock(cin, c(spec.depth))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in reversed(range(spec.depth)):
            self.up.append(nn.ConvTranspose2d(c(level + 1), c(level), 2, stride=2))
            self.dec.append(ConvBlock(2 * c(level), c(level)))
        self.head = nn.Conv2d(c(0), spec.num_classes, 1)

    @property
    def multiple(self) -> int:
        return 2**self.spec.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference in which every Conv2d directly followed by a BatchNorm2d (inside an
    ``nn.Sequential``, as in :class:`ConvBlock`) carries the norm's running statistics and affine in its own
    weight and bias, and the norm is an identity. Same outputs in eval mode (to float rounding), one pass
    over each activation fewer: on a CPU a 512 x 512 slice is memory-bound, and the pass is ~25% of the time
    (BENCHMARKS.md, issue 17). Only for eval: the copy has no batch statistics to train with."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        items = list(mod._modules.items())
        for (name_a, a), (name_b, b) in zip(items, items[1:], strict=False):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.track_running_stats:
                mod._modules[name_a] = fuse_conv_bn_eval(a, b)
                mod._modules[name_b] = nn.Identity()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def pad_multiple(x: torch.Tensor, multiple: int, value: float) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad (..., H, W) symmetrically to multiples of ``multiple``; returns the tensor and the
    (top, bottom, left, right) padding to undo with :func:`unpad`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph or pw:
        x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]), value=value)
    return x, pads


def unpad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    t, b, left, r = pads
    h, w = x.shape[-2:]
    return x[..., t:h - b, left:w - r]
