"""`styleseg import` and `styleseg info` through Typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from styleseg.cli import app


def test_import_then_info(tiny_ct, tmp_path):
    root, _, _ = tiny_ct
    m = tmp_path / "MAP.toml"
    m.write_text('[structures]\n"GTV-1" = "heart"\n')
    r = CliRunner().invoke(app, ["import", str(root), "--out", str(tmp_path / "ds"), "--structures", str(m)])
    assert r.exit_code == 0, r.output
    assert "P1" in r.output and "heart" in r.output
    r = CliRunner().invoke(app, ["info", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert "B30f" in r.output and "ACME" in r.output and "4x12x10" in r.output and "body*" in r.output


def test_import_bad_input_exit_2_and_names_file(tmp_path):
    r = CliRunner().invoke(app, ["import", str(tmp_path / "missing"), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "missing" in r.output and "does not exist" in r.output
    assert not (tmp_path / "ds").exists()


def test_import_help_has_example():
    r = CliRunner().invoke(app, ["import", "--help"])
    assert r.exit_code == 0 and "Example" in r.output
