"""Resampling to the training spacing (seg/resample.py) and its use by the predictor and `styleseg segment`."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from styleseg.errors import InputError
from styleseg.io.volume import Volume, read_nifti, write_nifti
from styleseg.seg.predict import Predictor
from styleseg.seg.resample import network_size, resample_labels, resample_slice, spacing_ratio
from styleseg.seg.segment import segment


def test_network_size_follows_the_spacing_and_the_tolerance():
    assert network_size((512, 512), (0.977, 0.977), None) is None  # a model without a training spacing
    assert network_size((512, 512), (0.93, 0.93), 0.977) is None  # 5 % off: inside the 10 % tolerance
    assert network_size((512, 512), (0.62, 0.62), 0.977) == (325, 325)  # 512 * 0.62 / 0.977 = 324.9
    assert network_size((400, 500), (0.5, 0.8), 1.0) == (320, 250)  # rows follow y (0.8), columns x (0.5)
    assert spacing_ratio((0.5, 0.5), 1.0) == spacing_ratio((2.0, 2.0), 1.0) == 2.0


def test_labels_resample_by_nearest_neighbour():
    lab = np.array([[0, 1], [2, 3]], np.uint8)
    up = resample_labels(lab, (4, 4))
    np.testing.assert_array_equal(up, np.kron(lab, np.ones((2, 2), np.uint8)))  # no new values, exact blocks
    np.testing.assert_array_equal(resample_labels(up, (2, 2)), lab)


def test_resample_slice_keeps_mean_hu_and_reports_the_new_spacing():
    rng = np.random.default_rng(0)
    hu = (40 + rng.normal(0, 30, (120, 100))).astype(np.float32)
    out, sp = resample_slice(hu, (0.6, 0.6), 0.977)
    assert out.shape == (74, 61) and np.allclose(sp, (0.6 * 100 / 61, 0.6 * 120 / 74))
    assert abs(float(out.mean()) - float(hu.mean())) < 1.0
    assert out.std() < 0.8 * hu.std()  # interpolation averages noise: the texture changes (docs/seg.md)
    same, sp2 = resample_slice(hu, (0.95, 0.95), 0.977)
    assert same is not None and np.array_equal(same, hu) and sp2 == (0.95, 0.95)  # inside the tolerance


def _as_spacing(vol: Volume, mm: float) -> Volume:
    """``vol`` resampled in-plane to ``mm`` pixels by SimpleITK (linear), same physical extent and origin corner."""
    img = vol.to_sitk()
    size = [int(round(vol.shape[2] * vol.spacing[0] / mm)), int(round(vol.shape[1] * vol.spacing[1] / mm)),
            vol.shape[0]]
    origin = np.asarray(vol.origin) + (np.array([mm, mm, 0.0]) - np.array([*vol.spacing[:2], 0.0])) / 2
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), (mm, mm, vol.spacing[2]),
                        vol.direction, -1000.0, sitk.sitkFloat32)
    return Volume.from_sitk(out)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(int(a.sum() + b.sum()), 1)


@pytest.fixture(scope="module")
def model_1mm(tmp_path_factory, toy_dataset):
    """A toy U-Net trained at 1.0 mm long enough to find lungs and heart (Dice > 0.9 on a toy case)."""
    import dataclasses

    from styleseg.seg.train import SegTrainConfig, train_segmentation

    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=8, depth=2, crop=32, batch_size=4,
                              epochs=2, steps_per_epoch=40, lr=1e-2, val_fraction=0.0, elastic_prob=0.0,
                              rotate_deg=0.0)
    return train_segmentation([toy_dataset], tmp_path_factory.mktemp("m1mm") / "m", cfg, progress=False)


LUNGS_HEART = (1, 2, 3)


def test_a_volume_at_0p6_mm_gets_labels_on_its_grid_that_agree_with_the_1mm_prediction(tmp_path, model_1mm):
    from seg_builders import toy_case

    arr, truth = toy_case(np.random.default_rng(5), n=3, size=32)
    one = Volume(arr.astype(np.float32), (1.0, 1.0, 3.0), (-16.0, -16.0, 0.0))
    fine = _as_spacing(one, 0.6)
    assert fine.shape == (3, 53, 53)
    p = Predictor(model_1mm)
    assert p.train_spacing == 1.0
    want = p.predict_volume(one).array
    assert min(_dice(want == v, truth == v) for v in LUNGS_HEART) > 0.9  # the model works at its own spacing
    got = p.predict_volume(fine).array
    assert got.shape == fine.shape and got.dtype == np.uint8  # on the 0.6 mm grid itself
    # voxel agreement on the 0.6 mm grid, against the 1 mm prediction at each fine pixel centre (nearest; the
    # 1 mm staircase alone costs a few % on organs 8-12 px across)
    ref = resample_labels(want, fine.shape[1:])
    dice = {v: _dice(got == v, ref == v) for v in LUNGS_HEART}
    assert min(dice.values()) > 0.85, dice
    native = Predictor(model_1mm, resample=False).predict_volume(fine).array  # the old behaviour, for contrast
    assert np.mean([_dice(native == v, ref == v) for v in LUNGS_HEART]) < np.mean(list(dice.values())) - 0.05
    # the same through `styleseg segment` (streaming): identical labels, the input's grid kept
    src = write_nifti(fine.with_array(np.rint(fine.array).astype(np.int16)), tmp_path / "fine.nii.gz")
    rep = segment([src], model_1mm, tmp_path / "out", chunk_slices=2)
    assert rep.done == ["fine"], rep.failed
    out = read_nifti(tmp_path / "out" / "fine.nii.gz")
    assert out.same_grid(read_nifti(src))
    np.testing.assert_array_equal(out.array, p.predict_volume(read_nifti(src)).array)


def test_far_off_spacings_are_refused_unless_forced(tmp_path, toy_model):
    p = Predictor(toy_model)
    p.check_geometry((3.0, 3.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))  # 3x off: resampled (with a warning)
    with pytest.raises(InputError, match=r"5.00x off.*--force-spacing"):
        p.check_geometry((5.0, 5.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(InputError, match=r"3.00x off"):  # without resampling the old limit (2x) holds
        Predictor(toy_model, resample=False).check_geometry((3.0, 3.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
