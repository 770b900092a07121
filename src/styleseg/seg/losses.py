"""Dice + cross-entropy with partial labels: the marginal loss (Shi et al. 2021).

Shi, Miao, Zhang, Li, Zhou, "Marginal loss and exclusion loss for partially supervised multi-organ
segmentation", Medical Image Analysis 70 (2021). A structure that a case did not annotate is
*unknown* there, not background: its pixels carry a catch-all label (background, or body inside the
torso). For such a pixel the target is the union {label} U {unannotated classes} and the network's
probability of that union is what is scored (eq. 3 of the paper, "marginal" cross-entropy):

    CE_marg = -log( sum_{c in T(pixel)} p_c ),  T = {y} U U_case  if y is a catch-all class, else {y}

so moving probability between "body" and an unannotated "heart" on such pixels leaves the loss
unchanged, and the case never teaches "this heart-looking tissue is not heart". The soft Dice term
(batch Dice as in nnU-Net / MONAI ``DiceLoss(batch=True)``) merges the same way: for a catch-all
class c, q_c = p_c + [y = c] * sum_{u in U} p_u; Dice of an unannotated class is skipped for that
case. With every class annotated this is exactly MONAI's ``DiceCELoss(softmax=True,
to_onehot_y=True, batch=True)`` (checked in tests/seg/test_losses.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def marginal_dice_ce(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor,
                     catch_all: Sequence[int] = (0,), dice_weight: float = 1.0, ce_weight: float = 1.0,
                     smooth: float = 1e-5, ce_balance: float = 0.0) -> torch.Tensor:
    """Marginal Dice + CE.

    ``logits`` (B, C, H, W); ``target`` (B, H, W) integer labels; ``annotated`` (B, C) bool: which
    classes each sample's case annotated (catch-all classes count as annotated); ``catch_all``: the
    classes that absorb unannotated structures (background, and body if the schema has one).

    ``ce_balance`` = b weights each pixel's cross-entropy by f^-b, f the share of the batch's pixels that carry its
    label (0: the plain mean; 1: every label present weighs the same in total; the Dice term is unchanged).

    Computed with as few (B, C, H, W) tensors as the definition allows (it is a fifth of a CPU training
    step otherwise): the probabilities ``p`` once, the probability ``p_u`` of the sample's unknown classes per
    pixel, the target's probability ``p_t``; then CE = -log(p_t + [y catch-all] p_u), and the Dice sums per
    (sample, class) are scatter-adds of per-pixel values over the target labels.
    """
    b, c = logits.shape[:2]
    logits = logits.float()
    target = target.long()
    ann = annotated.to(device=logits.device, dtype=torch.bool).clone()
    ca = torch.zeros(c, dtype=torch.bool, device=logits.device)
    ca[list(catch_all)] = True
    ann[:, ca] = True
    unknown = (~ann).to(logits.dtype)  # (B, C)
    logp = F.log_softmax(logits, dim=1)
    p = logp.exp()
    t = target[:, None]  # (B, 1, H, W)
    logp_t = logp.gather(1, t)[:, 0]  # (B, H, W)
    p_t = logp_t.exp()
    is_ca = ca[target].to(p.dtype)  # (B, H, W)
    if bool(unknown.any()):
        p_u = torch.einsum("bchw,bc->bhw", p, unknown)
        merged = p_u * is_ca
        ce_px = -torch.log((p_t + merged).clamp_min(torch.finfo(p.dtype).tiny))
    else:  # every class annotated: the plain cross-entropy, in log space
        merged = torch.zeros_like(p_t)
        ce_px = -logp_t
    if ce_balance > 0:
        share = torch.bincount(target.flatten(), minlength=c).to(p.dtype) / target.numel()
        w_px = share.clamp_min(torch.finfo(p.dtype).tiny).pow(-ce_balance)[target]
        ce = (ce_px * w_px).sum() / w_px.sum()
    else:
        ce = ce_px.mean()
    # Dice sums per (sample, class): inter = sum over the class's pixels of q = p_t + merged;
    # denom = sum of q over all pixels (p, plus the merged mass on catch-all pixels) + the class's pixel count
    flat_t = target.flatten(1)  # (B, P)
    q_t = (p_t + merged).flatten(1)
    inter = torch.zeros(b, c, dtype=p.dtype, device=p.device).scatter_add_(1, flat_t, q_t)
    merged_by = torch.zeros(b, c, dtype=p.dtype, device=p.device).scatter_add_(1, flat_t, merged.flatten(1))
    count = torch.zeros(b, c, dtype=p.dtype, device=p.device).scatter_add_(1, flat_t, torch.ones_like(q_t))
    w = ann.to(p.dtype)  # skip unannotated (sample, class) pairs
    inter = (inter * w).sum(0)
    denom = ((p.sum(dim=(2, 3)) + merged_by + count) * w).sum(0)
    has = ann.any(0)
    dice = (2 * inter + smooth) / (denom + smooth)
    dice_loss = (1 - dice[has]).mean()
    return dice_weight * dice_loss + ce_weight * ce


def consistency_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Paired consistency (beyond the paper): the mean squared difference of the class probabilities of two
    views of the same crop (a source slice and a restyled version of it, same anatomy and labels), per pixel
    and class. 0 when the network segments both alike, whatever it segments. Shimovolos et al. 2022
    (F-Consistency) use the MSE of feature maps of same-scan kernel pairs; on the output it needs no choice of
    layer and bounds the term (each difference is in [-1, 1])."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"paired logits need one shape, got {tuple(logits_a.shape)} and {tuple(logits_b.shape)}")
    pa, pb = torch.softmax(logits_a.float(), dim=1), torch.softmax(logits_b.float(), dim=1)
    return ((pa - pb) ** 2).mean()
