"""The model-input encoding (seg/inputs.py): position channels in the body frame, 2.5D stacks, the InputSpec
that training writes into model.json and the predictor reads back."""

from __future__ import annotations

import numpy as np
import pytest
from seg_builders import slab

from styleseg.errors import ConfigError
from styleseg.labels import body_bounds, derive_body
from styleseg.seg.inputs import InputSpec, body_box, body_frame, context_stack, position_maps


def test_input_spec_round_trips_through_model_json_with_one_default_each():
    spec = InputSpec(windows=("soft_tissue", "lung"), context=2, position=True, downsample=1)
    meta = spec.to_model_json()
    assert meta == {"windows": ["soft_tissue", "lung"], "context": 2, "position": True, "downsample": 1,
                    "position_smooth_px": 2.0}
    assert InputSpec.from_model_json(meta) == spec
    assert spec.in_channels == 2 * 5 + 2
    # a model from before the frame's low-pass existed: read back as trained, without it
    legacy = InputSpec.from_model_json({"windows": ["soft_tissue"], "position": True})
    assert legacy.position_smooth_px == 0.0 and legacy.context == 0 and legacy.downsample == 1
    with pytest.raises(ConfigError, match="context"):
        InputSpec(context=5)
    with pytest.raises(ConfigError, match="window"):
        InputSpec(windows=("nope",))


def test_body_frame_is_the_body_box():
    fr = body_frame(np.stack([slab(), np.full((40, 48), -1000.0, np.float32)]))
    np.testing.assert_allclose(fr[0], [19.5, 23.5, 9.5, 17.5])  # centre and half-extent of rows 10-29, cols 6-41
    np.testing.assert_allclose(fr[1], [19.5, 23.5, 20.0, 24.0])  # no body: the whole slice


def test_body_components_open_with_the_5x5_box_zero_outside():
    from scipy import ndimage as ndi

    from styleseg.labels import body_components

    rng = np.random.default_rng(3)
    hu = np.where(ndi.gaussian_filter(rng.normal(size=(3, 60, 70)), (0, 1.5, 1.5)) > 0, 40.0, -1000.0)
    box = np.ones((1, 5, 5), bool)
    want = ndi.label(ndi.binary_dilation(ndi.binary_erosion(hu > -400, box), box))
    got = body_components(hu)
    assert got[1] == want[1] > 3
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("noise", [0.0, 60.0, 150.0])
def test_body_bounds_is_the_box_of_derive_body(noise):
    """The body frame skips derive_body's hole filling: the box of the largest component must not change."""
    rng = np.random.default_rng(int(noise))
    yy, xx = np.mgrid[:96, :128]
    for shift in range(4):
        hu = np.full((96, 128), -1000.0, np.float32)
        hu[((yy - 45) / 30) ** 2 + ((xx - 60 - shift) / 45) ** 2 < 1] = 40.0  # torso
        hu[((yy - 45) / 18) ** 2 + ((xx - 45 - shift) / 12) ** 2 < 1] = -850.0  # a lung: a hole in the body
        hu[86:88, 5:120] = 200.0  # a thin table, detached by the opening
        hu[40:55, 112 + shift:119 + shift] = 30.0  # an arm apart: a smaller component
        hu += rng.normal(0.0, noise, hu.shape).astype(np.float32)
        ys, xs = np.nonzero(derive_body(hu))
        assert body_bounds(hu) == (ys.min(), ys.max(), xs.min(), xs.max())
    assert body_bounds(np.full((20, 20), -1000.0, np.float32)) is None


def test_body_frame_survives_low_dose_noise():
    """A chest of an 8-px wall of fat (-100 HU) around lungs (-850 HU) and a mediastinum, with 250 HU of white
    noise (the noisiest generated style of the demo): unsmoothed, the opening in derive_body breaks the thin wall
    and the frame shrinks to a fragment; the 2-px low-pass of body_frame finds the whole body box."""
    rng = np.random.default_rng(0)
    hu = np.full((96, 128), -1000.0, np.float32)
    hu[20:80, 10:118] = -100.0
    hu[28:72, 18:110] = -850.0
    hu[28:72, 56:72] = 40.0
    hu += rng.normal(0, 250, hu.shape).astype(np.float32)
    want = [49.5, 63.5, 29.5, 53.5]  # rows 20-79, columns 10-117
    np.testing.assert_allclose(body_frame(hu)[0], want, atol=1.0)
    assert np.abs(body_frame(hu, smooth_px=0.0)[0] - want).max() > 10


def test_body_box_holds_every_slice_and_the_detached_arms_but_not_the_table():
    """Two slices of a 256 x 240 field: a chest (rows 60-139, columns 60-169) on a 2-px table (row 200, full
    width), an arm apart from it (columns 190-209), and a second slice whose chest reaches row 150. The box
    covers both slices' bodies and the arm with 16 px to spare, rounded to 16, and leaves the table out."""
    a = np.full((256, 240), -1000.0, np.float32)
    a[60:140, 60:170] = 40.0
    a[80:120, 190:210] = 40.0  # the arm: 800 px, over 1% of the chest
    a[200:202, :] = 200.0  # the table: removed by the 5 x 5 opening
    b = a.copy()
    b[140:151, 60:170] = 40.0
    y0, y1, x0, x1 = body_box(np.stack([a, b]), margin=16, multiple=16)
    assert (y1 - y0) % 16 == 0 and (x1 - x0) % 16 == 0
    assert y0 <= 60 - 16 and y1 >= 151 + 16 and x0 <= 60 - 16 and x1 >= 210 + 16
    assert y1 < 200 and (y1 - y0) - (151 - 60 + 32) < 16 and (x1 - x0) - (210 - 60 + 32) < 16
    # a box larger than the slice is the slice; a box at the edge is shifted inside it
    assert body_box(a, margin=200) == (0, 256, 0, 240)
    edge = np.full((64, 64), -1000.0, np.float32)
    edge[0:20, 40:64] = 40.0
    assert body_box(edge, margin=8, multiple=16) == (0, 48, 16, 64)  # 20 + 16 -> 48 rows; 24 + 16 -> 48 columns
    assert body_box(np.full((2, 32, 32), -1000.0, np.float32)) is None  # no body


def test_position_maps_run_minus_one_to_one_across_the_body():
    fr = body_frame(slab())[0]
    p = position_maps(fr, np.arange(40)[:, None], np.arange(48)[None, :])
    assert p.shape == (2, 40, 48) and p.dtype == np.float32
    assert p[0, 20, 6] == pytest.approx(-1.0) and p[0, 20, 41] == pytest.approx(1.0)  # x: right to left edge
    assert p[1, 10, 20] == pytest.approx(-1.0) and p[1, 29, 20] == pytest.approx(1.0)  # y: front to back
    # the same anatomy in a wider field of view, shifted: the same values on the body
    big = np.full((64, 80), -1000.0, np.float32)
    big[7:47, 20:68] = slab()
    q = position_maps(body_frame(big)[0], np.arange(64)[:, None], np.arange(80)[None, :])
    np.testing.assert_allclose(q[:, 7:47, 20:68], p, atol=1e-6)


def test_context_stack_repeats_edges_and_reads_neighbour_chunks():
    hu = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)  # slice z has value z
    got = context_stack(hu, 0, 4, 1)[:, :, 0, 0]
    np.testing.assert_array_equal(got, [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])
    got = context_stack(hu, 0, 4, 2)[:, :, 0, 0]
    np.testing.assert_array_equal(got[0], [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(got[3], [1, 2, 3, 3, 3])
    before, after = np.full((2, 2, 2), -1.0), np.full((1, 2, 2), 9.0)
    got = context_stack(hu, 0, 4, 2, before, after)[:, :, 0, 0]
    np.testing.assert_array_equal(got[0], [-1, -1, 0, 1, 2])
    np.testing.assert_array_equal(got[3], [1, 2, 3, 9, 9])  # 9 is the last slice of the volume: repeated
