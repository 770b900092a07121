"""Case ids from file names and PatientIDs: readable, file-system safe, and never two names on one id."""

from __future__ import annotations

import unicodedata

import pytest
from rel_helpers import expect_error, write_ct_nifti
from typer.testing import CliRunner

from styleseg.cli import app
from styleseg.io.dataset import Dataset, check_case_id, safe_case_id


@pytest.mark.parametrize("text,want", [
    ("пациент 1", "пациент_1"), ("患者 7", "患者_7"), ("LUNG1-001", "LUNG1-001"), ("a/b", "a_b"),
    ("../x", "x"), ("  P 1 ", "P_1"), ("Müller", "Müller"),
])
def test_safe_case_id_keeps_letters(text, want):
    assert safe_case_id(text) == want
    check_case_id(want)  # what safe_case_id makes, a dataset accepts


def test_unicode_names_stay_distinct():
    names = ["пациент 1", "пациент 2", "患者 1", "Patient 1", "😀", "😃", "x" * 300, "x" * 299 + "y"]
    ids = [safe_case_id(n) for n in names]
    assert len(set(ids)) == len(names)
    assert all(len(i.encode()) <= 200 for i in ids)
    assert safe_case_id("Müller") == safe_case_id(unicodedata.normalize("NFD", "Müller"))  # one name, two spellings


def test_import_keeps_non_ascii_cases_apart(tmp_path):
    write_ct_nifti(tmp_path / "src" / "пациент 1_ct.nii.gz")
    write_ct_nifti(tmp_path / "src" / "пациент 2_ct.nii.gz")
    r = CliRunner().invoke(app, ["import", str(tmp_path / "src"), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, (r.output, r.exception)
    assert sorted(c.case_id for c in Dataset(tmp_path / "ds")) == ["пациент_1", "пациент_2"]


def test_two_names_on_one_id_is_an_error(tmp_path):
    write_ct_nifti(tmp_path / "src" / "a b_ct.nii.gz")
    write_ct_nifti(tmp_path / "src" / "a_b_ct.nii.gz")
    expect_error(["import", str(tmp_path / "src"), "--out", str(tmp_path / "ds")],
                 input="two NIfTI names that make the same case id (`a b`, `a_b`)",
                 contains=["'a b'", "'a_b'", "case id 'a_b'", "rename"], left="nothing at --out", tmp=tmp_path)
    assert not (tmp_path / "ds").exists()
