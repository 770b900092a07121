"""Segment-wise Gram style loss (eq. 1) and content loss (eq. 2) on tiny tensors with hand-computed values."""

from __future__ import annotations

import torch

from styleseg.style.losses import (
    gram,
    resize_mask,
    segment_content_loss,
    segment_grams,
    segment_masks,
    segment_mean_loss,
    segment_style_loss,
    style_targets,
)


def _feat():
    # (1, 2, 2, 2): channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 1], [1, 0]]
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])


def test_gram_whole_map_and_masked_by_hand():
    f = _feat()
    # positions p: (1,0), (2,1), (3,1), (4,0); G = sum f f^T / 4
    g = gram(f)
    assert torch.allclose(g[0], torch.tensor([[30.0, 5.0], [5.0, 2.0]]) / 4)
    # mask = top row only: positions (1,0), (2,1) -> [[1+4, 2], [2, 1]] / 2
    mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert torch.allclose(gram(f, mask)[0], torch.tensor([[5.0, 2.0], [2.0, 1.0]]) / 2)
    assert torch.equal(gram(f, torch.zeros(1, 2, 2)), torch.zeros(1, 2, 2))  # empty segment -> zeros


def test_mask_is_area_resized_to_the_layer():
    lab = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]])
    m = segment_masks(lab, 2)
    assert m.shape == (1, 2, 4, 4)
    r = resize_mask(m, (2, 2))
    assert torch.allclose(r[0, 1], torch.tensor([[1.0, 0.0], [0.0, 0.25]]))
    assert torch.allclose(r.sum(1), torch.ones(1, 2, 2))
    # the Gram of a feature map at half resolution uses the soft mask as weights
    f = _feat()
    want = (1.0 * torch.tensor([[1.0, 0], [0, 0]]) + 0.25 * torch.tensor([[16.0, 0], [0, 0]])) / 1.25
    assert torch.allclose(gram(f, m[:, 1:2])[0], want)


def test_segment_grams_on_supports_equal_masked_whole_map_grams():
    """segment_grams gathers each segment's support instead of masking the whole map once per segment: same
    Grams, areas and gradients, at full and at coarser (soft-mask) layers, with an absent segment."""
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, 5, (2, 6, 6), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)  # (2, 24, 24)
    lab[1][lab[1] == 3] = 2  # segment 3 absent from slice 1
    masks = segment_masks(lab, 5).double()
    for size in (24, 12, 7):
        f = torch.randn(2, 3, size, size, dtype=torch.float64, generator=g, requires_grad=True)
        got, areas = segment_grams(f, masks)
        m = resize_mask(masks, (size, size))
        want = torch.stack([gram(f, m[:, k:k + 1]) for k in range(5)], dim=1)
        assert got.shape == (2, 5, 3, 3)
        assert torch.allclose(got, want, atol=1e-12)
        assert torch.allclose(areas, m.flatten(2).sum(2))
        assert torch.equal(got[1, 3], torch.zeros(3, 3))
        w = torch.randn(2, 5, 3, 3, dtype=torch.float64, generator=g)
        (ga,) = torch.autograd.grad((got * w).sum(), f)
        (gb,) = torch.autograd.grad((want * w).sum(), f)
        assert torch.allclose(ga, gb, atol=1e-12)


def test_style_loss_hand_computed():
    """One layer, N=2, segment 1 = the top row in R, the bottom row in S (different anatomy)."""
    fr = _feat()
    fs = torch.tensor([[[[9.0, 9.0], [2.0, 0.0]], [[9.0, 9.0], [0.0, 2.0]]]])
    lab_r = torch.tensor([[[1, 1], [0, 0]]])
    lab_s = torch.tensor([[[0, 0], [1, 1]]])
    t = style_targets({"l": fs}, segment_masks(lab_s, 2), ["l"])
    # G_R(seg1) = [[5,2],[2,1]]/2 ; G_S(seg1) = positions (2,0), (0,2) -> [[4,0],[0,4]]/2
    d1 = torch.tensor([[5.0, 2.0], [2.0, 1.0]]) / 2 - torch.tensor([[4.0, 0.0], [0.0, 4.0]]) / 2
    # G_R(seg0) = bottom row (3,1),(4,0) -> [[25,3],[3,1]]/2 ; G_S(seg0) = (9,9),(9,9) -> 81 everywhere
    d0 = torch.tensor([[25.0, 3.0], [3.0, 1.0]]) / 2 - torch.full((2, 2), 81.0)
    want = ((d0 ** 2).sum() + (d1 ** 2).sum()) / (4 * 2 * 2)
    got = segment_style_loss({"l": fr}, segment_masks(lab_r, 2), t, ["l"], [1.0])
    assert torch.allclose(got, want)
    # layer weights scale it; a segment missing from the style slice contributes nothing
    got2 = segment_style_loss({"l": fr}, segment_masks(lab_r, 3), style_targets(
        {"l": fs}, segment_masks(lab_s, 3), ["l"]), ["l"], [2.0])
    assert torch.allclose(got2, 2 * want)


def test_style_loss_ignores_pixels_outside_the_segment():
    g = torch.Generator().manual_seed(0)
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[:, 2:6, 2:6] = 1
    masks = segment_masks(lab, 2)
    style = torch.rand(1, 3, 8, 8, generator=g)
    t = style_targets({"l": style}, masks, ["l"])
    only_seg1 = torch.tensor([[False, True]])
    t1 = type(t)(t.grams, t.present & only_seg1)
    gen = torch.rand(1, 3, 8, 8, generator=g)
    before = segment_style_loss({"l": gen}, masks, t1, ["l"])
    gen2 = gen.clone()
    gen2[:, :, lab[0] == 0] = torch.rand(3, int((lab == 0).sum()), generator=g) * 100
    after = segment_style_loss({"l": gen2}, masks, t1, ["l"])
    assert before > 0 and torch.allclose(before, after)
    gen3 = gen.clone()
    gen3[:, :, 3, 3] += 1.0  # a pixel inside the segment changes it
    assert not torch.allclose(before, segment_style_loss({"l": gen3}, masks, t1, ["l"]))
    # identical features and masks -> zero loss
    assert segment_style_loss({"l": style}, masks, t, ["l"]).item() == 0.0


def test_style_targets_per_batch_element():
    fs = torch.rand(3, 2, 4, 4)
    lab = torch.zeros(3, 4, 4, dtype=torch.long)
    lab[1, :2] = 1
    t = style_targets({"l": fs}, segment_masks(lab, 2), ["l"])
    assert t.grams["l"].shape == (3, 2, 2, 2)
    assert t.present.tolist() == [[True, False], [True, True], [True, False]]
    sel = t.select(torch.tensor([1, 1, 0]))
    assert torch.equal(sel.grams["l"][0], t.grams["l"][1]) and sel.present.shape == (3, 2)
    # the loss of element b uses the targets of its own style
    loss_each = [segment_style_loss({"l": fs[i:i + 1]}, segment_masks(lab[i:i + 1], 2), t.select(torch.tensor([i])),
                                    ["l"]) for i in range(3)]
    assert all(v.item() == 0.0 for v in loss_each)


def test_content_loss_hand_computed():
    r = _feat()
    o = torch.zeros_like(r)
    lab = torch.tensor([[[1, 1], [0, 0]]])
    # seg1: top row, sum of squares = (1+0) + (4+1) = 6, N=2, M=2 -> 6/(2*2*2)
    # seg0: bottom row (9+1) + (16+0) = 26 -> 26/8
    got = segment_content_loss({"c": r}, {"c": o}, segment_masks(lab, 3), ["c"])
    assert torch.allclose(got, torch.tensor(6 / 8 + 26 / 8))
    assert segment_content_loss({"c": r}, {"c": r}, segment_masks(lab, 3), ["c"]).item() == 0.0


def test_mean_hu_term():
    hu = torch.tensor([[[[-800.0, -900.0], [50.0, 30.0]]]])
    lab = torch.tensor([[[1, 1], [0, 0]]])
    means = torch.tensor([[40.0, -850.0]])
    assert segment_mean_loss(hu, segment_masks(lab, 2), means, torch.tensor([[True, True]])).item() == 0.0
    got = segment_mean_loss(hu, segment_masks(lab, 2), torch.tensor([[40.0, -650.0]]), torch.tensor([[True, True]]))
    assert torch.allclose(got, torch.tensor(4.0))  # (200 HU / 100)^2
