"""Training data (seg/data.py): the patient split and deterministic batches of augmented crops."""

from __future__ import annotations

import numpy as np
import pytest
from seg_builders import slab

from styleseg.errors import ConfigError
from styleseg.seg.data import Batcher, TrainCase, patient_split
from styleseg.seg.inputs import InputSpec, body_frame


def test_patient_split_groups_augmented_copies():
    groups = ["A", "A", "A", "B", "B", "C", "D"]
    keys = ["A", "A_s1", "A_s2", "B", "B_s1", "C", "D"]
    v = patient_split(groups, 0.25, seed=3, keys=keys)
    for g in set(groups):  # a patient is wholly on one side
        assert len({v[i] for i in range(len(groups)) if groups[i] == g}) == 1
    assert sum(set(g for g, x in zip(groups, v, strict=True) if x).__len__() for _ in [0]) == 1
    assert patient_split(groups, 0.25, 3, keys=keys) == v  # reproducible
    explicit = patient_split(groups, 0.25, 3, val_cases=["B_s1"], keys=keys)
    assert explicit == [False, False, False, True, True, False, False]
    with pytest.raises(ConfigError):
        patient_split(groups, 0.25, 3, val_cases=["Z"], keys=keys)


@pytest.mark.parametrize("axis", [0, 1])
def test_batcher_crops_carry_the_inference_positions_and_keep_the_random_draws(axis):
    """A crop pixel gets the value inference gives its source pixel of the whole slice. The body is a HU ramp
    along ``axis`` (100 + row or column), so a crop pixel's HU says where in the slice it came from (bilinear
    sampling of a ramp is exact inside the body). The HU channels (the random draws) are those of a batcher
    without position channels."""
    from styleseg.data.transforms import TrainAugment, TrainAugmentConfig

    img = np.stack([slab(box=(8 + z, 30, 4 + z, 40)) for z in range(3)])
    ramp = np.broadcast_to(np.arange(img.shape[1 + axis], dtype=np.float32).reshape((-1, 1) if axis == 0 else (1, -1)),
                           img.shape[1:])
    img = np.where(img > 0, 100 + ramp, img).astype(np.int16)
    lab = (img > -500).astype(np.uint8) * 3
    case = TrainCase("c", "c", img, lab, np.ones(7, bool), (1.0, 1.0))
    # crops centred on organ pixels (integer centres): every sample at a half-pixel, so a crop pixel that
    # mixes in air drops far below the body's HU
    aug = TrainAugment(TrainAugmentConfig(crop=16, rotate_deg=0.0, scale=(1.0, 1.0), elastic_prob=0.0,
                                          foreground_prob=1.0), (3,))
    b = Batcher([case], aug, InputSpec(position=True), 5, None)
    x, y, _ = b.next(8, 0, 1)
    x0, y0, _ = Batcher([case], aug, InputSpec(), 5, None).next(8, 0, 1)
    assert x.shape == (8, 3, 16, 16)
    np.testing.assert_array_equal(x[:, :1].numpy(), x0.numpy())
    np.testing.assert_array_equal(y.numpy(), y0.numpy())
    z_of = [int(b.index[i][1]) for i in np.random.Generator(np.random.PCG64(5)).integers(len(b.index), size=8)]
    checked = 0
    for i in range(8):
        hu = x[i, 0].numpy()
        inside = hu > 0
        cy, cx, hy, hx = body_frame(img[z_of[i]])[0]
        src = hu[inside] - 100  # the source row (axis 0) or column (axis 1) of each body pixel of the crop
        want = (src - cx) / hx if axis == 1 else (src - cy) / hy
        np.testing.assert_allclose(x[i, 1 + (1 - axis)].numpy()[inside], want, atol=1e-5)
        checked += int(inside.sum())
    assert checked > 500


def test_batcher_stacks_neighbours_in_order():
    from styleseg.data.transforms import TrainAugment, TrainAugmentConfig

    img = (np.arange(5, dtype=np.int16)[:, None, None] * 100 * np.ones((1, 8, 8), np.int16))
    case = TrainCase("c", "c", img, np.zeros((5, 8, 8), np.uint8), np.ones(7, bool), (1.0, 1.0))
    aug = TrainAugment(TrainAugmentConfig(crop=8, enabled=False, foreground_prob=0.0))
    calls = []

    def extra(hu, rng):  # an intensity arm: one random draw per sample, the same for every slice of the stack
        v = rng.normal()
        calls.append(v)
        return hu + v

    b = Batcher([case], aug, InputSpec(context=1), 0, extra)
    x, _, _ = b.next(16, 0, 1)
    assert x.shape == (16, 3, 8, 8)
    z = np.round((x[:, :, 4, 4].numpy() - np.asarray(calls[::3])[:, None]) / 100).astype(int)
    for row in z:  # (z-1, z, z+1) clamped to the volume
        c = row[1]
        assert list(row) == [max(c - 1, 0), c, min(c + 1, 4)]
    assert np.allclose(calls[0::3], calls[1::3]) and np.allclose(calls[0::3], calls[2::3])


def test_pair_batches_hold_a_crop_and_the_same_crop_of_a_restyled_version():
    """Consistency pairs: the first half of a batch are source crops, the second half the same crops (same
    geometry, labels and intensity draws) of a generated version of the same slice."""
    from styleseg.data.transforms import TrainAugment, TrainAugmentConfig
    from styleseg.seg.data import PairBatcher

    rng = np.random.default_rng(0)
    img = rng.normal(40, 10, (3, 32, 32)).astype(np.int16)
    lab = np.zeros((3, 32, 32), np.uint8)
    lab[:, 8:24, 8:24] = 3
    ann = np.ones(7, bool)
    src = TrainCase("c", "c", img, lab, ann, (1.0, 1.0), origin="c")
    gens = [TrainCase(f"c_s{k}", "c", (img + 500 * (k + 1)).astype(np.int16), lab, ann, (1.0, 1.0), origin="c",
                      generated=True) for k in range(2)]
    other = TrainCase("d", "d", img, lab, ann, (1.0, 1.0), origin="d")  # no versions: never drawn
    aug = TrainAugment(TrainAugmentConfig(crop=16, foreground_prob=0.5), (3,))
    b = PairBatcher([src, *gens, other], aug, InputSpec(), 3, lambda hu, r: hu + r.normal(0, 5))
    x, y, _ = b.next(8)
    assert x.shape == (8, 1, 16, 16)
    diff = (x[4:] - x[:4]).numpy()
    steps = np.round(np.median(diff.reshape(4, -1), axis=1) / 500)
    assert set(steps.tolist()) <= {1.0, 2.0}  # each second-half crop is one of the two versions (+500 / +1000 HU)
    inside = x[:4].numpy() > -900  # pixels sampled from inside the slice (outside: air, in both)
    want = np.broadcast_to((steps * 500)[:, None, None, None], diff.shape)
    np.testing.assert_allclose(diff[inside], want[inside], atol=1e-3)  # same pixels, same intensity draws
    np.testing.assert_array_equal(y[:4].numpy(), y[4:].numpy())
    with pytest.raises(ConfigError, match="generated versions"):
        PairBatcher([src, other], aug, InputSpec(), 0)


def test_real_share_sets_the_share_of_real_samples():
    """Unset, every slice is equally likely (1 real of 5 versions); real_share = r draws r of the samples from the
    real cases, each pool uniform over its slices; a set of one kind only is unaffected; the config checks it."""
    from styleseg.data.transforms import TrainAugment, TrainAugmentConfig
    from styleseg.seg.train import SegTrainConfig

    img = np.zeros((2, 16, 16), np.int16)
    lab = np.zeros((2, 16, 16), np.uint8)
    ann = np.ones(7, bool)
    # the real cases hold 4 slices; 4 restyled versions of each, 16 slices, and one pseudo-labelled case
    real = [TrainCase(k, k, img, lab, ann, (1.0, 1.0), origin=k) for k in ("a", "b")]
    gens = [TrainCase(f"{r.key}_s{j}", r.key, img, lab, ann, (1.0, 1.0), origin=r.key, generated=True)
            for r in real for j in range(4)]
    pseudo = [TrainCase("t", "t", img, lab, ann, (1.0, 1.0), pseudo=True)]
    cases = real + gens + pseudo
    aug = TrainAugment(TrainAugmentConfig(crop=16), (3,))

    def share(batcher, n=4000):
        rows = np.concatenate([batcher._pick(100) for _ in range(n // 100)])
        cis = batcher.index[rows, 0]
        return np.mean([cases[ci].real for ci in cis]), np.bincount(cis, minlength=len(cases)) / len(cis)

    frac, _ = share(Batcher(cases, aug, InputSpec(), 0))
    assert frac == pytest.approx(4 / 22, abs=0.03)  # uniform over the 22 slices
    frac, per_case = share(Batcher(cases, aug, InputSpec(), 0, real_share=0.5))
    assert frac == pytest.approx(0.5, abs=0.03)
    assert per_case[0] == pytest.approx(0.25, abs=0.03) and per_case[1] == pytest.approx(0.25, abs=0.03)
    assert per_case[2:] == pytest.approx(np.full(9, 0.5 / 9), abs=0.02)  # 9 other cases of 2 slices each
    assert share(Batcher(cases, aug, InputSpec(), 0, real_share=1.0))[0] == 1.0
    assert share(Batcher(cases, aug, InputSpec(), 0, real_share=0.0))[0] == 0.0
    a, b = Batcher(real, aug, InputSpec(), 7), Batcher(real, aug, InputSpec(), 7, real_share=0.2)
    np.testing.assert_array_equal(a._pick(50), b._pick(50))  # real cases only: the same draws as unset
    x, y, _ = Batcher(cases, aug, InputSpec(), 0, real_share=0.5).next(4)
    assert x.shape == (4, 1, 16, 16) and y.shape == (4, 16, 16)
    with pytest.raises(ConfigError, match="real_share"):
        SegTrainConfig(real_share=1.5)
    with pytest.raises(ConfigError, match="real_share"):
        SegTrainConfig(real_share=0.5, consistency_weight=1.0)


def test_split_cases_validates_on_real_slices_only():
    """Validation patients come from patients with a real case; their generated and pseudo-labelled versions
    are neither validated on nor trained on; pseudo-labelled target patients never become validation."""
    from styleseg.seg.data import split_cases

    def case(key, patient, generated=False, pseudo=False):
        z = np.zeros((1, 4, 4), np.int16)
        return TrainCase(key, patient, z, z.astype(np.uint8), np.ones(2, bool), (1.0, 1.0), key.split("_")[0],
                         generated, pseudo)

    cases = [case("A", "A"), case("A_s0", "A", generated=True), case("A_s1", "A", generated=True),
             case("B", "B"), case("B_s0", "B", generated=True),
             case("T_z001", "T", pseudo=True), case("T_z002", "T", pseudo=True)]
    train, val = split_cases(cases, 0.5, seed=0, val_cases=["A_s1"])
    assert [c.key for c in val] == ["A"]
    assert [c.key for c in train] == ["B", "B_s0", "T_z001", "T_z002"]
    for seed in range(20):  # drawn among A and B only, one of the two
        train, val = split_cases(cases, 0.5, seed=seed)
        assert len(val) == 1 and val[0].key in ("A", "B")
        assert {c.patient for c in train} == {"A", "B", "T"} - {val[0].patient}
    with pytest.raises(ConfigError):
        split_cases(cases, 0.5, 0, val_cases=["Z"])


@pytest.mark.parametrize("build", ["oracle", "physics"])
def test_reimaged_copies_are_versions_not_validation_cases(tmp_path, toy_dataset, build):
    """The oracle's and physics randomisation's training data keep each source case beside its re-imaged copies.
    The copies are versions of that case (origin = the case), so a validation patient is validated on its
    original only, and none of its copies is trained on."""
    from styleseg.io.dataset import Dataset
    from styleseg.pipeline.data import build_oracle, build_physics
    from styleseg.seg.data import load_cases, split_cases

    out = tmp_path / build
    if build == "oracle":
        build_oracle(toy_dataset, out, ["low-dose-sharp", "ultra-low-dose-standard"], seed=0)
    else:
        build_physics(toy_dataset, out, versions=3, seed=0)
    originals = {r.case_id for r in Dataset(toy_dataset)}
    recs = list(Dataset(out))
    assert {r.reimaged_from for r in recs} == originals | {None}
    assert {r.case_id for r in recs if r.reimaged_from is None} == originals
    cases, _ = load_cases([out])
    copies = [c for c in cases if c.key not in originals]
    assert len(copies) == len(cases) - len(originals) > 0
    assert all(c.generated and not c.real and c.origin == c.patient for c in copies)
    assert all(c.real and c.origin == c.key for c in cases if c.key in originals)
    train, val = split_cases(cases, 0.25, seed=0)
    assert [c.key for c in val] == [val[0].patient] and val[0].key in originals
    assert all(c.patient != val[0].patient for c in train)
    assert len(train) == len(cases) - len(cases) // len(originals)
