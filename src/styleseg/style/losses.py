"""Segment-wise style and content losses on VGG-19 features (paper eqs. 1 and 2; Gatys et al. 2016).

Notation (paper sec. 2.2): R is the generated slice, S the style slice, O the original source slice whose
label map is the generator's input. A segment sg is one label value (the schema's structures, body and
background); ``F^l`` is the (N_l channels x M_l positions) feature matrix of layer l restricted to the
segment, and ``G = F F^T`` its Gram matrix.

- Style, eq. (1): ``L_s = sum_sg sum_l w_l / (4 N_l^2 M_l^2) ||G(R_sg^l) - G(S_sg^l)||_F^2``.
- Content, eq. (2): ``L_c = sum_sg sum_l 1 / (2 N_l M_l) ||R_sg^l - O_sg^l||^2``.

R and S have *different* anatomies: R has the source slice's label map, S its own. The Gram targets of
segment sg come from S's mask of sg, the generated features are masked with the source label map. So
the two sides of eq. (1) generally have different M_l; we normalise each Gram by its own mask area
(:func:`gram` returns ``G / M``), which makes eq. (1) ``1/(4 N^2) ||G_R/M_R - G_S/M_S||^2`` and equals
the paper's expression exactly when ``M_R = M_S``. Masks are resized to each layer's resolution by
area averaging (soft masks in [0, 1]; a position's weight is the fraction of it inside the segment).
A segment absent from R's or S's label map contributes nothing.

All functions are pure (no state, no parameters) and work on batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F


def segment_masks(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer label maps (B, H, W) -> float one-hot masks (B, K, H, W), K = ``num_classes``."""
    if label.ndim != 3:
        raise ValueError(f"label must be (B, H, W), got {tuple(label.shape)}")
    return F.one_hot(label.long(), num_classes).permute(0, 3, 1, 2).float()


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average masks (B, K, H, W) to a layer's (H_l, W_l); identity when the size already matches."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="area")


def gram(features: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Mask-restricted, area-normalised Gram matrix ``G / M`` of a feature map.

    features: (B, C, H, W); mask: None (whole map), (B, 1, H', W') or (B, H', W') with values in [0, 1]
    at any resolution (area-resized to (H, W)). Returns (B, C, C) = sum_p m_p f_p f_p^T / sum_p m_p
    (zeros for an empty mask).
    """
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    if mask is None:
        return f @ f.transpose(1, 2) / float(h * w)
    if mask.ndim == 3:
        mask = mask[:, None]
    m = resize_mask(mask.to(features.dtype), (h, w)).reshape(b, 1, h * w)
    area = m.sum(dim=2, keepdim=True)  # (B, 1, 1)
    return (f * m) @ f.transpose(1, 2) / area.clamp_min(eps)


def segment_grams(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grams of every segment: features (B, C, H, W), masks (B, K, H', W') -> ((B, K, C, C), areas (B, K)),
    the areas counted at the layer's resolution (M_l)."""
    b, c, h, w = features.shape
    m = resize_mask(masks.to(features.dtype), (h, w))
    grams = []
    for k in range(m.shape[1]):
        grams.append(gram(features, m[:, k:k + 1]))
    areas = m.reshape(b, m.shape[1], h * w).sum(dim=2)
    return torch.stack(grams, dim=1), areas


@dataclass(frozen=True)
class StyleTargets:
    """Gram targets of a style slice, computed once: ``grams[layer]`` (S, K, C, C) and ``present`` (S, K)
    (segment k appears in style slice s). S = number of style slices (1 for a single style)."""

    grams: Mapping[str, torch.Tensor]
    present: torch.Tensor

    def select(self, index: torch.Tensor) -> StyleTargets:
        """Per-batch-element targets for style indices ``index`` (B,) (conditional generator)."""
        return StyleTargets({k: v[index] for k, v in self.grams.items()}, self.present[index])

    def to(self, device: torch.device | str) -> StyleTargets:
        return StyleTargets({k: v.to(device) for k, v in self.grams.items()}, self.present.to(device))


def style_targets(feats_style: Mapping[str, torch.Tensor], masks_style: torch.Tensor,
                  layers: Sequence[str]) -> StyleTargets:
    """Gram targets G(S_sg^l) of style slices: features {layer: (S, C, H, W)}, masks (S, K, H, W) from the
    style slices' own label maps."""
    grams = {}
    for layer in layers:
        grams[layer] = segment_grams(feats_style[layer].detach(), masks_style)[0].detach()
    present = masks_style.flatten(2).sum(dim=2) > 0
    return StyleTargets(grams, present)


def segment_style_loss(feats_gen: Mapping[str, torch.Tensor], masks_gen: torch.Tensor, targets: StyleTargets,
                       layers: Sequence[str], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Eq. (1): sum over segments present in both R and S and over style layers of
    ``w_l / (4 N_l^2) ||G_R/M_R - G_S/M_S||_F^2``, averaged over the batch.

    feats_gen: {layer: (B, C, H, W)} of R; masks_gen: (B, K, H, W) from the *source* label map;
    targets: from the style slice(s), with a leading dimension of 1 (broadcast) or B.
    """
    weights = [1.0] * len(layers) if weights is None else list(weights)
    if len(weights) != len(layers):
        raise ValueError("one weight per style layer is needed")
    b = masks_gen.shape[0]
    present_gen = masks_gen.flatten(2).sum(dim=2) > 0  # (B, K)
    present = (present_gen & targets.present.expand(b, -1)).to(masks_gen.dtype)  # (B, K)
    total = masks_gen.new_zeros(())
    for layer, wl in zip(layers, weights, strict=True):
        g, _ = segment_grams(feats_gen[layer], masks_gen)  # (B, K, C, C)
        t = targets.grams[layer].expand_as(g)
        n = g.shape[-1]
        per_seg = ((g - t) ** 2).sum(dim=(-1, -2)) / (4.0 * n * n)  # (B, K)
        total = total + wl * (per_seg * present).sum(dim=1).mean()
    return total


def segment_content_loss(feats_gen: Mapping[str, torch.Tensor], feats_orig: Mapping[str, torch.Tensor],
                         masks: torch.Tensor, layers: Sequence[str], eps: float = 1e-8) -> torch.Tensor:
    """Eq. (2): sum over segments and content layers of ``1/(2 N_l M_l) sum_p m_p ||r_p - o_p||^2``,
    averaged over the batch. R and O share the label map, so one set of masks (B, K, H, W) serves both;
    M_l is the (soft) mask area at layer l; empty segments contribute nothing."""
    total = masks.new_zeros(())
    for layer in layers:
        r, o = feats_gen[layer], feats_orig[layer].detach()
        b, n, h, w = r.shape
        m = resize_mask(masks.to(r.dtype), (h, w))  # (B, K, h, w)
        sq = ((r - o) ** 2).sum(dim=1, keepdim=True)  # (B, 1, h, w)
        num = (sq * m).flatten(2).sum(dim=2)  # (B, K)
        area = m.flatten(2).sum(dim=2)
        per_seg = torch.where(area > eps, num / (2.0 * n * area.clamp_min(eps)), torch.zeros_like(num))
        total = total + per_seg.sum(dim=1).mean()
    return total


def segment_mean_loss(hu_gen: torch.Tensor, masks_gen: torch.Tensor, target_means: torch.Tensor,
                      target_present: torch.Tensor, scale: float = 100.0, eps: float = 1e-8) -> torch.Tensor:
    """Beyond the paper: squared error of each segment's mean HU against the style slice's, in units of
    ``scale`` HU. The VGG losses see only the soft-tissue window (clamped), so lungs (-850 HU) and bone
    would otherwise have no intensity target at all. hu_gen (B, 1, H, W); target_means (B or 1, K)."""
    b = masks_gen.shape[0]
    m = masks_gen.to(hu_gen.dtype)
    area = m.flatten(2).sum(dim=2)
    mean = (hu_gen * m).flatten(2).sum(dim=2) / area.clamp_min(eps)
    use = ((area > eps) & target_present.expand(b, -1)).to(hu_gen.dtype)
    return ((((mean - target_means.expand(b, -1)) / scale) ** 2) * use).sum(dim=1).mean()
