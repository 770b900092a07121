"""Marginal Dice + CE (Shi et al. 2021): equal to MONAI DiceCELoss when fully annotated; hand values."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from torch.nn import functional as F

from styleseg.seg.losses import marginal_dice_ce


def test_equals_monai_dice_ce_when_fully_annotated():
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (3, 8, 8), generator=g)
    ann = torch.ones(3, 4, dtype=torch.bool)
    ours = marginal_dice_ce(logits, target, ann, catch_all=(0,))
    ref = DiceCELoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(
        logits, target[:, None])
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)


def test_marginal_ce_hand_computed():
    # one pixel, classes (bg, a, b); b unannotated; label bg -> CE = -log(p_bg + p_b)
    logits = torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    ann = torch.tensor([[True, True, False]])
    e = [math.exp(v) for v in (0.0, 1.0, 2.0)]
    want_ce = -math.log((e[0] + e[2]) / sum(e))
    got = marginal_dice_ce(logits, target, ann, catch_all=(0,), dice_weight=0.0)
    assert float(got) == pytest.approx(want_ce, rel=1e-6)
    # a pixel labelled with an annotated organ keeps its single target: -log p_a
    got_a = marginal_dice_ce(logits, torch.ones(1, 1, 1, dtype=torch.long), ann, catch_all=(0,), dice_weight=0.0)
    assert float(got_a) == pytest.approx(-math.log(e[1] / sum(e)), rel=1e-6)


def test_balanced_ce_hand_computed():
    # 4 pixels, labels (0, 0, 0, 1): ce_balance = 1 weighs each label's pixels by 1/share (4/3 and 4), so the CE is
    # the mean over labels of each label's mean CE; 0.5 weighs them by share^-0.5
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 2, 1, 4, generator=g)
    target = torch.tensor([[[0, 0, 0, 1]]])
    ann = torch.ones(1, 2, dtype=torch.bool)
    ce = -F.log_softmax(logits, 1).gather(1, target[:, None])[0, 0, 0]
    got = marginal_dice_ce(logits, target, ann, catch_all=(0,), dice_weight=0.0, ce_balance=1.0)
    assert float(got) == pytest.approx(float((ce[:3].mean() + ce[3]) / 2), rel=1e-6)
    w = torch.tensor([0.75, 0.75, 0.75, 0.25]) ** -0.5
    got = marginal_dice_ce(logits, target, ann, catch_all=(0,), dice_weight=0.0, ce_balance=0.5)
    assert float(got) == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-6)
    plain = marginal_dice_ce(logits, target, ann, catch_all=(0,), dice_weight=0.0)
    assert float(plain) == pytest.approx(float(ce.mean()), rel=1e-6)
    assert float(marginal_dice_ce(logits, target, ann, catch_all=(0,), ce_balance=1.0)) != pytest.approx(
        float(marginal_dice_ce(logits, target, ann, catch_all=(0,))))


def test_marginal_dice_hand_computed():
    # 2 pixels, classes (bg, a, b), b unannotated; labels (bg, a); softmax probs chosen via log
    p = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.8, 0.1]])  # pixel x class
    logits = p.log().T.reshape(1, 3, 1, 2)
    target = torch.tensor([[[0, 1]]])
    ann = torch.tensor([[True, True, False]])
    # q_bg = p_bg + [y=bg] p_b = (0.8, 0.1); dice_bg = 2*0.8 / (0.9 + 1); dice_a = 2*0.8/(1.0 + 1)
    d_bg, d_a = 2 * 0.8 / 1.9, 2 * 0.8 / 2.0
    got = marginal_dice_ce(logits, target, ann, catch_all=(0,), ce_weight=0.0, smooth=0.0)
    assert float(got) == pytest.approx(1 - (d_bg + d_a) / 2, rel=1e-5)


def test_unannotated_heart_pixels_never_push_heart_down():
    """A case without heart annotation: on its body-labelled pixels the gradient on the heart
    logit must not lower heart (<= 0 for gradient descent); the naive loss lowers it (> 0)."""
    g = torch.Generator().manual_seed(1)
    c = 7  # bg, lungs, heart=3, eso, cord, body=6
    logits = torch.randn(2, c, 6, 6, generator=g, requires_grad=True)
    target = torch.full((2, 6, 6), 6)
    target[:, :2] = 0
    target[:, 4:, :3] = 1
    ann = torch.ones(2, c, dtype=torch.bool)
    ann[:, 3] = False  # heart not annotated in either case
    loss = marginal_dice_ce(logits, target, ann, catch_all=(0, 6))
    (grad,) = torch.autograd.grad(loss, logits)
    catch = (target == 6) | (target == 0)
    assert (grad[:, 3][catch] <= 1e-12).all()
    naive = marginal_dice_ce(logits, target, torch.ones_like(ann), catch_all=(0, 6))
    (grad_n,) = torch.autograd.grad(naive, logits)
    assert (grad_n[:, 3][catch] > 0).all()
    # the loss only sees p_body + p_heart there: moving mass between them changes nothing
    with torch.no_grad():
        p = logits.softmax(1)
        p2 = p.clone()
        m = (target == 6)
        moved = 0.5 * p2[:, 3][m]
        p2[:, 3][m] -= moved
        p2[:, 6][m] += moved
        a = marginal_dice_ce(p.log(), target, ann, catch_all=(0, 6))
        b = marginal_dice_ce(p2.log(), target, ann, catch_all=(0, 6))
    assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_consistency_loss_hand_computed():
    from styleseg.seg.losses import consistency_loss

    # one pixel, two classes: softmax([0, 0]) = (0.5, 0.5), softmax([ln 3, 0]) = (0.75, 0.25)
    a = torch.zeros(1, 2, 1, 1)
    b = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1, 1).float()
    assert consistency_loss(a, b).item() == pytest.approx((0.25**2 + 0.25**2) / 2)
    assert consistency_loss(b, b).item() == 0.0
    # a shift of every logit of a pixel leaves its probabilities, and the loss, unchanged
    assert consistency_loss(a + 5.0, b).item() == pytest.approx(consistency_loss(a, b).item())
    g = torch.zeros(1, 2, 1, 1, requires_grad=True)
    consistency_loss(g, b).backward()
    assert g.grad[0, 0].item() < 0 < g.grad[0, 1].item()  # pulls class 0 up towards b's 0.75
    with pytest.raises(ValueError):
        consistency_loss(a, torch.zeros(1, 3, 1, 1))


def reference_marginal_dice_ce(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor,
                     catch_all: Sequence[int] = (0,), dice_weight: float = 1.0, ce_weight: float = 1.0,
                     smooth: float = 1e-5) -> torch.Tensor:
    """The definition written out with one-hot tensors (the first implementation), as the oracle.

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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_lean_loss_equals_the_definition_with_partial_labels(seed):
    """The loss (and its gradient) equal the one-hot definition on random logits, labels and partial
    annotation (some classes unannotated in some samples), body and background as catch-alls."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(4, 7, 12, 10, generator=g)).requires_grad_()
    target = torch.randint(0, 7, (4, 12, 10), generator=g)
    ann = torch.rand(4, 7, generator=g) > 0.3
    got = marginal_dice_ce(logits, target, ann, catch_all=(0, 6))
    want = reference_marginal_dice_ce(logits, target, ann, catch_all=(0, 6))
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    (ga,) = torch.autograd.grad(got, logits)
    (gb,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
