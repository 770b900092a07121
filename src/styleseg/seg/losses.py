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
                     smooth: float = 1e-5) -> torch.Tensor:
    """Marginal Dice + CE.

    ``logits`` (B, C, H, W); ``target`` (B, H, W) integer labels; ``annotated`` (B, C) bool: which
    classes each sample's case annotated (catch-all classes count as annotated); ``catch_all``: the
    classes that absorb unannotated structures (background, and body if the schema has one).
    """
    b, c = logits.shape[:2]
    logits = logits.float()
    target = target.long()
    ann = annotated.to(device=logits.device, dtype=torch.bool).clone()
    ca = torch.zeros(c, dtype=torch.bool, device=logits.device)
    ca[list(catch_all)] = True
    ann[:, ca] = True
    unknown = ~ann  # (B, C)
    onehot = F.one_hot(target, c).permute(0, 3, 1, 2).to(logits.dtype)  # (B, C, H, W)
    is_ca_pixel = ca[target]  # (B, H, W)
    # allowed target set per pixel
    allowed = onehot.bool() | (is_ca_pixel[:, None] & unknown[:, :, None, None])
    logp = F.log_softmax(logits, dim=1)
    neg_inf = torch.finfo(logp.dtype).min
    ce = -torch.logsumexp(logp.masked_fill(~allowed, neg_inf), dim=1).mean()

    p = logp.exp()
    p_unknown = (p * unknown[:, :, None, None].to(p.dtype)).sum(1, keepdim=True)  # (B, 1, H, W)
    q = p + onehot * ca[None, :, None, None].to(p.dtype) * p_unknown
    w = ann[:, :, None, None].to(p.dtype)  # skip unannotated (sample, class) pairs
    inter = (q * onehot * w).sum(dim=(0, 2, 3))
    denom = ((q + onehot) * w).sum(dim=(0, 2, 3))
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
