"""Fuzz dataset.json: random case ids, label folders, missing keys and wrong types (seeded, ~200 cases).

Opening the dataset and reading every case either works with every path inside the dataset root, or
raises InputError; never another exception type, and never a path outside the root.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from rel_helpers import write_ct_nifti

from styleseg.errors import InputError
from styleseg.io.dataset import Dataset
from styleseg.io.volume import Volume, write_nifti

IDS = ["case1", "LUNG1-001", "a.b", "..", ".", "", "/", "../x", "../../../../tmp/evil", "/etc/passwd", "a/b",
       "a\\b", "C:\\x", "пациент_1", "患者", "😀", "x" * 300, "é" * 120, " sp ace ", "tab\there", "nul\x00l",
       "~root", "$HOME", "a..b", "-dash", "_u", "CON", "a:b", "labelsTr", "imagesTr"]
ROLES = ["labelsTr", "labelsRef", None, "../../etc", "/etc", "imagesTr", "labelsTs", "", ".", 5, [], {},
         "labelsTr/../..", True]
NAMES = ["lung_left", "heart", "body", "liver", "", 3, None, ["heart"], {"a": 1}]
FILE_ENDINGS = [".nii.gz", ".nii", ".mha", "", None, 7, "/../../x.nii.gz", ["x"]]
SAFE_IDS = ["case1", "пациент_1", "患者", "LUNG1-001", "a.b", "_u", "x-1.2"]


def _value(rng: random.Random, choices: list[Any]) -> Any:
    v = rng.choice(choices)
    return v if not isinstance(v, list | dict) else json.loads(json.dumps(v))


def _names(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.7:
        return [_value(rng, NAMES) for _ in range(rng.randint(0, 3))]
    return _value(rng, NAMES + ["heart", 0.5])


def _tame_case(rng: random.Random) -> dict[str, Any]:
    c: dict[str, Any] = {"labels": rng.choice(["labelsTr", "labelsRef", None])}
    c["annotated"] = rng.sample(["lung_left", "heart", "body"], rng.randint(0, 2))
    if rng.random() < 0.1:  # one small defect
        c[rng.choice(["labels", "annotated", "derived"])] = _value(rng, ROLES + NAMES)
    return c


def _case(rng: random.Random) -> Any:
    if rng.random() < 0.08:
        return _value(rng, ["labelsTr", 1, None, ["a"]])
    c: dict[str, Any] = {}
    for key, gen in (("labels", lambda: _value(rng, ROLES)), ("annotated", lambda: _names(rng)),
                     ("derived", lambda: _names(rng))):
        if rng.random() < 0.85:
            c[key] = gen()
    if rng.random() < 0.2:
        c["scanner"] = {"Manufacturer": rng.choice(["[/evil]", "ACME", 5])}
    return c


def _labels(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.75:
        return {"background": 0, "lung_left": 1, "heart": 3, "body": 6}
    return _value(rng, [["heart"], {"heart": "x"}, {"heart": [1, 2]}, {"background": 0, "heart": 300}, "x",
                        {"heart": 1, "lung": 1}, None, {"background": 0, "heart": 2.5}])


def _dataset_json(rng: random.Random) -> Any:
    if rng.random() < 0.03:
        return _value(rng, [[], "x", 3, None])
    js: dict[str, Any] = {"name": "fuzz", "channel_names": {"0": "CT"}}
    if rng.random() < 0.95:
        js["labels"] = _labels(rng)
    if rng.random() < 0.95:
        js["file_ending"] = ".nii.gz" if rng.random() < 0.7 else _value(rng, FILE_ENDINGS)
    r = rng.random()
    if r < 0.85:
        cases: Any = {}
        if rng.random() < 0.5:
            cases = {cid: _tame_case(rng) for cid in rng.sample(SAFE_IDS, rng.randint(1, 3))}
        for _ in range(rng.randint(0, 4) if not cases or rng.random() < 0.2 else 0):
            cid = rng.choice(IDS) if rng.random() < 0.6 else "".join(
                rng.choice("ab./\\_-é😀 \x00") for _ in range(rng.randint(0, 8)))
            cases[cid] = _case(rng)
        if rng.random() < 0.05:
            cases = _value(rng, [["a", "b"], "cases", 1])
        js["styleseg"] = {"format_version": 1, "meta": {} if rng.random() < 0.95 else "m", "cases": cases}
    elif r < 0.92:
        js["styleseg"] = _value(rng, [[], "x", None])
    return js  # else: no styleseg extension (a plain nnU-Net dataset: cases discovered from files)


def _inside(root: Path, p: Path | None) -> bool:
    if p is None:
        return True
    rp, pp = os.path.normpath(root), os.path.normpath(p)
    return os.path.commonpath([rp, pp]) == rp


def test_fuzz_dataset_json(tmp_path):
    rng = random.Random(1602)
    image = write_ct_nifti(tmp_path / "template.nii.gz", spacing=(1.0, 1.0, 1.0))
    label = write_nifti(Volume(np.zeros((3, 64, 64), np.uint8)), tmp_path / "label.nii.gz")
    outcomes = {"ok": 0, "input_error": 0, "cases_read": 0, "labels_read": 0}
    for i in range(200):
        root = tmp_path / f"ds{i:03d}"
        (root / "imagesTr").mkdir(parents=True)
        js = _dataset_json(rng)
        (root / "dataset.json").write_text(json.dumps(js))
        # give some well-formed cases their files, so reading gets past the existence checks
        cases = js.get("styleseg", {}).get("cases", {}) if isinstance(js, dict) and isinstance(
            js.get("styleseg"), dict) else {}
        if isinstance(cases, dict):
            for cid, c in cases.items():
                if cid in SAFE_IDS and rng.random() < 0.8:
                    shutil.copy(image, root / "imagesTr" / f"{cid}_0000.nii.gz")
                    role = c.get("labels") if isinstance(c, dict) else None
                    if role in ("labelsTr", "labelsRef") and rng.random() < 0.8:
                        (root / role).mkdir(exist_ok=True)
                        shutil.copy(label, root / role / f"{cid}.nii.gz")
        try:
            ds = Dataset(root)
        except InputError as e:
            assert e.path is not None and _inside(root, e.path), (js, e)
            outcomes["input_error"] += 1
            continue
        outcomes["ok"] += 1
        for c in ds:
            assert _inside(root, ds.image_path(c.case_id)), (js, c)
            assert _inside(root, ds.label_path(c.case_id)), (js, c)
            try:
                img = ds.load_image(c.case_id)
                outcomes["cases_read"] += 1
                if ds.load_label(c.case_id, img) is not None:
                    outcomes["labels_read"] += 1
            except InputError as e:
                assert e.path is None or _inside(root, e.path), (js, e)
    # the generator reaches both outcomes and real reads, so the test is not vacuous
    assert outcomes["ok"] >= 30 and outcomes["input_error"] >= 60, outcomes
    assert outcomes["cases_read"] >= 30 and outcomes["labels_read"] >= 15, outcomes
