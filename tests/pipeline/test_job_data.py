"""The job's pieces without a run: style slices at the training spacing, the content hash of corrected labels,
the model choice and the comparison model (pipeline/job_data.py, pipeline/style_labels.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from styleseg.errors import ConfigError
from styleseg.io.volume import Volume
from styleseg.pipeline.job_data import DEFAULT_WHY, choose_model, compare_arm, resample_styles
from styleseg.pipeline.style_labels import absent_structures, absent_warning, content_hash, provenance
from styleseg.style.styleset import StyleSlice


def _style(spacing: float, n: int = 70) -> StyleSlice:
    rng = np.random.default_rng(0)
    hu = (40 + rng.normal(0, 30, (1, n, n))).astype(np.int16)
    lab = np.zeros((1, n, n), np.uint8)
    lab[0, 20:50, 10:35] = 1
    img = Volume(hu, (spacing, spacing, 5.0), (-10.0, -20.0, 30.0))
    return StyleSlice(0, "c", 3, img, img.with_array(lab), "corrected", tags={"k": 1})


def test_a_style_slice_of_another_spacing_is_resampled_keeping_its_extent_and_labels():
    s = _style(0.7)
    (r,) = resample_styles([s], 0.98)
    assert r.image.shape == (1, 50, 50) and np.allclose(r.image.spacing[:2], 0.98) and r.image.spacing[2] == 5.0
    # the physical extent is kept: first pixel edge and last pixel edge at the same place
    for v in (s.image, r.image):
        assert np.allclose(np.asarray(v.origin[:2]) - np.asarray(v.spacing[:2]) / 2, (-10.35, -20.35), atol=1e-6)
    assert np.allclose(49 * 0.98 + r.image.origin[0] + 0.49, 69 * 0.7 + s.image.origin[0] + 0.35)
    assert set(np.unique(r.label_map)) == {0, 1}  # nearest: no new values
    area = (r.label_map == 1).sum() * 0.98**2
    assert abs(area / ((s.label_map == 1).sum() * 0.7**2) - 1) < 0.08  # the same labelled area in mm^2
    assert r.tags == {"k": 1, "resampled_from_mm": [0.7, 0.7]} and r.label_source == "corrected"
    assert resample_styles([s], 0.72)[0] is s and resample_styles([s], None)[0] is s  # within 10 %; no spacing


def test_a_style_label_map_without_lungs_is_named():
    from styleseg.labels import LabelSchema

    schema = LabelSchema.default()
    s = _style(0.98)  # label value 1 only (lung_left), 750 px
    absent = absent_structures(s, schema)
    assert "lung_left" not in absent and "body" not in absent
    assert {"lung_right", "heart", "esophagus", "spinal_cord"} <= set(absent)
    msg = absent_warning(s, absent)
    assert "style 0 (c, slice 3)" in msg and "lung_right" in msg and "style_slices" in msg
    assert provenance([s], "predicted", schema)["styles"][0]["absent"] == absent
    assert "absent" not in provenance([s], "predicted")["styles"][0]
    full = s.label.array.copy()
    for v in schema.values:  # every structure drawn: nothing absent
        full[0, 0:5, 5 * v:5 * v + 5] = v
    assert absent_structures(dataclasses.replace(s, label=s.label.with_array(full)), schema, min_px=20) == []


def test_the_content_hash_follows_values_not_files():
    a = {0: np.array([[0, 1], [2, 0]], np.uint8), 1: np.zeros((2, 2), np.uint8)}
    same = {1: np.zeros((2, 2), np.int16), 0: np.array([[0, 1], [2, 0]], np.int64)}
    assert content_hash(a) == content_hash(same)
    b = dict(a)
    b[1] = np.array([[0, 0], [0, 1]], np.uint8)
    assert content_hash(a) != content_hash(b)
    assert content_hash({0: a[0]}) != content_hash({1: a[0]})  # which style a map belongs to counts


def _metrics(run, arm: str, dice: dict[str, float]) -> None:
    d = run / "arms" / arm
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"mean": {s: {"dice": {"mean": v}} for s, v in dice.items()}}))


def test_the_model_is_chosen_by_measurement_where_references_exist_else_the_default(tmp_path):
    arms = ["baseline", "styleseg"]
    c = choose_model(tmp_path, arms, "baseline", "auto", has_refs=False)
    assert c["arm"] == "baseline" and c["rule"] == "default" and c["why"] == DEFAULT_WHY
    _metrics(tmp_path, "baseline", {"lung_left": 0.9, "heart": 0.5})
    _metrics(tmp_path, "styleseg", {"lung_left": 0.8, "heart": 0.7})
    c = choose_model(tmp_path, arms, "baseline", "auto", has_refs=True)
    assert c["arm"] == "styleseg" and c["rule"] == "measured" and c["scores"] == pytest.approx(
        {"baseline": 0.7, "styleseg": 0.75})
    assert "styleseg 0.750, baseline 0.700" in c["why"]
    assert choose_model(tmp_path, arms, "baseline", "baseline", True)["rule"] == "given"
    with pytest.raises(ConfigError, match="not a trained arm"):
        choose_model(tmp_path, arms, "baseline", "oracle", True)


def test_the_comparison_model_is_the_other_kind():
    arms = ["baseline", "position", "styleseg"]
    assert compare_arm("position", arms, "position", "auto", ["styleseg"]) == "styleseg"
    assert compare_arm("styleseg", arms, "position", "auto", ["styleseg"]) == "position"
    assert compare_arm("baseline", ["baseline"], "baseline", "auto", []) is None
    assert compare_arm("baseline", arms, "baseline", "none", ["styleseg"]) is None
    assert compare_arm("baseline", arms, "baseline", "position", ["styleseg"]) == "position"
