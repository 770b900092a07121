"""Label-free QC (eval/qc.py) on a toy thorax with hand-computed answers, and on a real NSCLC label map.

Toy grid: 40 x 120 x 200 voxels (z, y, x) of 1.5 x 1.5 x 5 mm = 11.25 mm^3 = 0.01125 ml. Identity direction,
so +x (higher column index) is the patient's left: lung_right at columns 10-59, heart 75-124, lung_left
140-189; lungs on slices 5-34 (30 x 80 x 50 = 120000 voxels = 1350 ml each), heart on slices 15-30
(16 x 40 x 50 = 32000 voxels = 360 ml), oesophagus and cord on every slice (so not "in the field").
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from styleseg.errors import InputError
from styleseg.eval.qc import (
    FLAG_WEIGHTS,
    QCThresholds,
    qc_case,
    qc_columns,
    qc_json,
    qc_thumbnail,
    review_order,
    write_qc_csv,
)
from styleseg.io.volume import Volume, read_nifti

SPACING = (1.5, 1.5, 5.0)
ML = 1.5 * 1.5 * 5.0 / 1000.0


def thorax() -> np.ndarray:
    lab = np.zeros((40, 120, 200), np.uint8)
    lab[:, 5:115, 2:198] = 6  # body
    lab[5:35, 20:100, 10:60] = 2  # lung_right (patient's right = low x)
    lab[5:35, 20:100, 140:190] = 1  # lung_left
    lab[15:31, 60:100, 75:125] = 3  # heart
    lab[:, 50:55, 97:103] = 4  # esophagus
    lab[:, 105:110, 97:103] = 5  # spinal cord: the midline at column 99.5
    return lab


def vol(lab: np.ndarray, direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)) -> Volume:
    return Volume(lab, SPACING, (0.0, 0.0, 0.0), direction)


def keys(rec) -> list[str]:
    return [f.key for f in rec.flags]


def test_plausible_case_measures_and_no_flags():
    rec = qc_case("ok", vol(thorax()), style="B30f-lowdose")
    s = rec.structures
    assert s["lung_left"].volume_ml == pytest.approx(120000 * ML) == pytest.approx(1350.0)
    assert s["heart"].volume_ml == pytest.approx(360.0) and s["esophagus"].volume_ml == pytest.approx(1200 * ML)
    assert s["lung_left"].z_range == (5, 34) and s["lung_left"].in_field and s["heart"].in_field
    assert not s["spinal_cord"].in_field  # touches the first and last slice
    assert all(s[n].n_components == 1 and s[n].largest_share == 1.0 for n in ("lung_left", "heart", "spinal_cord"))
    assert rec.lr == {"lr_volume_ratio": 1.0, "lung_left_on_left": 1.0, "lung_right_on_right": 1.0}
    assert rec.flags == [] and rec.score == 0.0 and rec.style == "B30f-lowdose"


def test_components_large_and_small():
    lab = thorax()
    lab[15:31, 60:100, 128:138] = 3  # a detached heart piece: 16 x 40 x 10 = 6400 voxels, 17 % of the heart
    lab[20, 10, 150:155] = 1  # a 5-voxel speck of lung_left: not a large component
    rec = qc_case("frag", vol(lab))
    h, ll = rec.structures["heart"], rec.structures["lung_left"]
    assert (h.n_components, h.n_large_components) == (2, 2)
    assert h.largest_share == pytest.approx(32000 / 38400)
    assert (ll.n_components, ll.n_large_components) == (2, 1) and ll.largest_share == pytest.approx(120000 / 120005)
    (flag,) = rec.flags
    assert flag.key == "fragmented:heart" and 15 <= flag.slice <= 30 and rec.score == FLAG_WEIGHTS["fragmented"]


def test_left_right_swap_is_judged_in_patient_coordinates():
    lab = thorax()
    swapped = lab.copy()
    swapped[lab == 1], swapped[lab == 2] = 2, 1
    rec = qc_case("swap", vol(swapped))
    assert keys(rec) == ["lr_swap"] and rec.lr["lung_left_on_left"] == 0.0 and rec.lr["lung_right_on_right"] == 0.0
    assert rec.flags[0].slice == 5 and rec.score == FLAG_WEIGHTS["lr_swap"]  # first slice of largest lung area
    # the same array with x running to the patient's right (direction -x): the labels are on the right sides
    flipped = qc_case("flipped", vol(swapped, (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)))
    assert flipped.flags == [] and flipped.lr["lung_left_on_left"] == 1.0


def test_lung_across_the_midline():
    lab = thorax()
    lab[5:35, 20:40, 140:190] = 2  # a quarter of the left lung labelled right (on the patient's left)
    rec = qc_case("mixed", vol(lab))
    assert "lr_side" in keys(rec) and rec.lr["lung_right_on_right"] == pytest.approx(120000 / 150000)


def test_gap_slice():
    lab = thorax()
    lab[20][lab[20] == 3] = 6
    rec = qc_case("gap", vol(lab))
    assert rec.structures["heart"].gap_slices == [20]
    assert keys(rec) == ["gap:heart"] and rec.flags[0].slice == 20


def test_volume_bounds_and_the_field_of_view():
    lab = thorax()
    lab[10:35][lab[10:35] == 1] = 6  # lung_left only on slices 5-9: 5 x 80 x 50 voxels = 225 ml, inside the scan
    rec = qc_case("small", vol(lab))
    assert rec.structures["lung_left"].volume_ml == pytest.approx(225.0)
    assert keys(rec) == ["volume_low:lung_left", "lr_ratio"] and rec.lr["lr_volume_ratio"] == pytest.approx(1 / 6, 1e-3)
    cut = thorax()
    cut[5:35][cut[5:35] == 1] = 6
    cut[0:5, 20:100, 140:190] = 1  # the same lung size, but cut off by the first slice: a partial view
    assert qc_case("cut", vol(cut)).flags == []
    big = thorax()
    big[:, 20:100, 60:140] = 3  # 40 x 80 x 80 voxels = 2880 ml: too big even though not wholly in the scan
    assert "volume_high:heart" in keys(qc_case("big", vol(big)))


def test_missing_structures():
    lab = thorax()
    lab[lab == 1] = 6
    rec = qc_case("nolung", vol(lab))
    assert keys(rec) == ["missing:lung_left"] and rec.lr["lr_volume_ratio"] is None
    lab = thorax()
    lab[lab == 3] = 6  # both lungs wholly in the scan: the heart must be there
    assert keys(qc_case("noheart", vol(lab))) == ["missing:heart"]


def test_agreement_between_two_predictions():
    lab = thorax()
    near, far = lab.copy(), lab.copy()
    for other, dx in ((near, 10), (far, 30)):
        other[other == 3] = 6
        other[15:31, 60:100, 75 + dx:125 + dx] = 3
    rec = qc_case("near", vol(lab), other=vol(near))
    assert rec.structures["heart"].agreement == pytest.approx(2 * 25600 / 64000) == pytest.approx(0.8)
    assert rec.flags == [] and rec.score == pytest.approx(0.2)  # no flag; 1 - lowest Dice breaks ties
    rec = qc_case("far", vol(lab), other=vol(far))
    assert rec.structures["heart"].agreement == pytest.approx(0.4)
    # the far heart covers 16 x 40 x 15 voxels of lung_left in the other prediction
    assert rec.structures["lung_left"].agreement == pytest.approx(2 * 110400 / 230400)
    assert keys(rec) == ["disagreement:heart"] and rec.score == pytest.approx(FLAG_WEIGHTS["disagreement"] + 0.6)
    assert rec.flags[0].slice == 15
    assert qc_case("far", vol(lab), other=vol(far), thresholds=QCThresholds(min_agreement=0.3)).flags == []


def test_csv_and_json_worst_first(tmp_path):
    lab = thorax()
    swapped = lab.copy()
    swapped[lab == 1], swapped[lab == 2] = 2, 1
    gap = lab.copy()
    gap[20][gap[20] == 3] = 6
    recs = [qc_case("b_ok", vol(lab)), qc_case("a_gap", vol(gap)), qc_case("c_swap", vol(swapped), style="s2")]
    assert [r.case for r in review_order(recs)] == ["c_swap", "a_gap", "b_ok"]
    out = write_qc_csv(recs, tmp_path / "qc.csv")
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == qc_columns() and qc_columns()[:4] == ["case", "score", "n_flags", "flags"]
    assert [r["case"] for r in rows] == ["c_swap", "a_gap", "b_ok"]
    assert rows[0]["flags"] == "lr_swap" and rows[0]["style"] == "s2" and float(rows[0]["score"]) == 5.0
    assert rows[1]["flags"] == "gap:heart" and rows[1]["heart_gap_slices"] == "1"
    assert float(rows[2]["lung_left_ml"]) == pytest.approx(1350.0) and rows[2]["heart_in_field"] == "1"
    assert rows[2]["heart_agreement"] == "" and rows[2]["reasons"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qc.csv"]  # written atomically, no temporary left
    data = json.loads(json.dumps(qc_json(recs)))
    assert [d["case"] for d in data] == ["c_swap", "a_gap", "b_ok"]
    assert data[1]["flags"] == [{"code": "gap", "structure": "heart", "reason": data[1]["flags"][0]["reason"],
                                 "slice": 20}]
    assert data[2]["structures"]["heart"]["z_range"] == [15, 30]


def test_thumbnail_shows_the_flagged_slice(tmp_path):
    import matplotlib.image as mpimg

    lab = thorax()
    hu = np.full(lab.shape, -1000, np.int16)
    hu[lab == 6], hu[(lab == 1) | (lab == 2)], hu[lab == 3] = 40, -850, 100
    gap = lab.copy()
    gap[20][gap[20] == 3] = 6
    frag = lab.copy()
    frag[15:31, 60:100, 128:138] = 3

    def reddish(png) -> int:  # pixels tinted by the heart colour (230, 40, 60)
        rgb = mpimg.imread(png)[..., :3]
        return int(np.sum(rgb[..., 0] - rgb[..., 1] > 0.3))

    rec = qc_case("gap", vol(gap))
    p = qc_thumbnail(vol(hu), vol(gap), rec, tmp_path / "gap.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and reddish(p) == 0  # slice 20: the heart vanished there
    rec = qc_case("frag", vol(frag))
    p = qc_thumbnail(vol(hu), vol(frag), rec, tmp_path / "frag.png", other=vol(lab))
    assert reddish(p) > 100 and mpimg.imread(p).shape[1] > mpimg.imread(tmp_path / "gap.png").shape[1]


def test_bad_input():
    lab = thorax()
    lab[0, 0, 0] = 9
    with pytest.raises(InputError, match=r"label values \[9\]"):
        qc_case("x", vol(lab))
    with pytest.raises(InputError, match="same image"):
        qc_case("x", vol(thorax()), other=vol(thorax()[:10]))


@pytest.mark.realdata
def test_real_nsclc_label_map_is_not_flagged():
    """LUNG1-002's clinical contours (every other slice kept: 6 mm) pass every check; mirrored, it is a swap."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "nsclc" / "LUNG1-002_labels.nii.gz"
    if not path.exists():
        pytest.skip(f"real test data {path} is absent (../shared/data is not in a fresh clone)")
    label = read_nifti(path)
    rec = qc_case("LUNG1-002", label)
    ml = float(np.prod(label.spacing)) / 1000
    for n, v in (("lung_left", 1), ("lung_right", 2), ("heart", 3)):
        assert rec.structures[n].volume_ml == pytest.approx(int((label.array == v).sum()) * ml, abs=1e-3)
        assert rec.structures[n].in_field and rec.structures[n].n_large_components == 1
    assert 1000 < rec.structures["lung_left"].volume_ml < 3000 and 200 < rec.structures["heart"].volume_ml < 1500
    assert rec.flags == [] and rec.lr["lung_left_on_left"] > 0.99 and rec.lr["lung_right_on_right"] > 0.99
    assert 0.9 < rec.lr["lr_volume_ratio"] < 1.2
    # one slice alone (a COVID-like single-slice series): only the left/right checks apply, and pass
    one = Volume(label.array[25:26], label.spacing, label.origin, label.direction)
    assert qc_case("one", one).flags == []
    mirrored = Volume(np.ascontiguousarray(label.array[:, :, ::-1]), label.spacing, label.origin, label.direction)
    assert "lr_swap" in [f.key for f in qc_case("mirrored", mirrored).flags]
