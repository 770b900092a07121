"""The NPS texture term (beyond the paper): estimator identical to the texture metric's, and it separates
textures and trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from styleseg.style.losses import (
    highpass,
    nps_texture_loss,
    radial_bins,
    roi_radial_power,
    soft_tissue_windows,
)
from styleseg.texture import nps_2d, radial_nps


def test_radial_power_equals_the_metric_estimator():
    rng = np.random.default_rng(0)
    rois = ndi.gaussian_filter(rng.normal(0, 20, (6, 24, 24)), (0, 1.0, 1.0))
    bins, _ = radial_bins(24)
    ours = roi_radial_power(torch.from_numpy(rois).float(), bins).double().numpy()
    ref = radial_nps(*nps_2d(rois, 1.0, "mean"), n_rois=6).nps
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_highpass_matches_scipy_away_from_the_border():
    x = np.random.default_rng(1).normal(0, 1, (64, 64))
    ours = highpass(torch.from_numpy(x)[None, None].float(), 3.0)[0, 0].numpy()
    ref = x - ndi.gaussian_filter(x, 3.0)
    np.testing.assert_allclose(ours[14:-14, 14:-14], ref[14:-14, 14:-14], atol=1e-5)


def test_windows_stay_inside_one_eroded_segment():
    lab = torch.zeros(1, 40, 40, dtype=torch.long)
    lab[:, 5:35, 5:35] = 6
    win = soft_tissue_windows(lab, (6,), roi=10, erode=3)
    ys, xs = torch.nonzero(win[0], as_tuple=True)
    assert len(ys) > 0
    assert ys.min() >= 8 and xs.min() >= 8 and ys.max() + 10 <= 32 and xs.max() + 10 <= 32
    assert not soft_tissue_windows(lab, (3,), roi=10).any()  # class absent: no window


def _textured(sigma_px: float, amp: float, seed: int) -> torch.Tensor:
    n = np.random.default_rng(seed).normal(0, 1, (4, 1, 96, 96))
    n = ndi.gaussian_filter(n, (0, 0, sigma_px, sigma_px)) if sigma_px else n
    n = n / n.std() * amp
    return torch.from_numpy(40.0 + n).float()


def test_loss_is_small_for_the_same_texture_and_large_for_another():
    lab = torch.full((4, 96, 96), 6, dtype=torch.long)
    bins, valid = radial_bins(24)
    g = torch.Generator().manual_seed(0)
    style = _textured(1.0, 20.0, 0)
    tgt = torch.log10(roi_radial_power(highpass(style)[:, 0, 10:34, 10:34], bins) + 1e-6)
    same = nps_texture_loss(_textured(1.0, 20.0, 1), lab, tgt, (6,), bins, valid, generator=g)
    white = nps_texture_loss(_textured(0.0, 20.0, 1), lab, tgt, (6,), bins, valid, generator=g)
    quiet = nps_texture_loss(_textured(1.0, 5.0, 1), lab, tgt, (6,), bins, valid, generator=g)
    assert same < 0.03  # estimation noise of 4 target + 16 generated 24-px ROIs
    assert white > 10 * same and quiet > 10 * same
    # 4x less std = 16x less power = 1.2 decades everywhere
    assert quiet.sqrt().item() == pytest.approx(np.log10(16.0), abs=0.1)


def test_loss_trains_a_noise_amplitude_and_ignores_segment_means():
    lab = torch.full((4, 96, 96), 6, dtype=torch.long)
    lab[:, :, :48] = 3  # two segments, different means: the step between them is not texture
    bins, valid = radial_bins(24)
    style = _textured(1.0, 20.0, 0)
    tgt = torch.log10(roi_radial_power(highpass(style)[:, 0, 10:34, 10:34], bins) + 1e-6)
    base = _textured(1.0, 1.0, 2) - 40.0
    means = torch.where(lab == 3, 60.0, -80.0)[:, None].float()
    amp = torch.tensor(3.0, requires_grad=True)
    opt = torch.optim.Adam([amp], lr=0.5)
    for step in range(150):
        loss = nps_texture_loss(means + amp * base, lab, tgt, (3, 6), bins, valid,
                                generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert amp.item() == pytest.approx(20.0, rel=0.15)


def test_no_window_gives_zero_loss():
    lab = torch.zeros(2, 32, 32, dtype=torch.long)
    bins, valid = radial_bins(24)
    out = nps_texture_loss(torch.zeros(2, 1, 32, 32), lab, torch.zeros(13), (6,), bins, valid)
    assert out.item() == 0.0


def test_generator_training_logs_the_nps_term(tmp_path):
    """fit_generators with the term on: targets found on a textured style slice, ``nps`` > 0 in the log."""
    import json

    from styleseg.labels import LabelSchema
    from styleseg.style.train import GeneratorConfig, fit_generators

    rng = np.random.default_rng(0)
    lab = np.zeros((96, 96), np.uint8)
    lab[8:88, 8:88] = 6
    lab[30:70, 30:70] = 3
    noise = ndi.gaussian_filter(rng.normal(0, 1, (96, 96)), 1.0)
    style = np.where(lab == 3, 60.0, np.where(lab == 6, 30.0, -1000.0)) + 40 * noise / noise.std() * (lab > 0)
    src = np.where(lab == 3, 50.0, np.where(lab == 6, 20.0, -1000.0))[None].astype(np.int16)
    rec = [{"index": 0, "case_id": "s", "slice": 0, "tags": {}}]
    cfg = GeneratorConfig.from_flat(crop=64, steps=4, batch=1, base=4, n_res=1, log_every=1, nps_weight=100.0)
    (folder,) = fit_generators(src, lab[None], [style], [lab], rec, tmp_path / "g", cfg, LabelSchema.default(),
                               progress=False)
    rows = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    assert all(r["nps"] > 0 for r in rows)
