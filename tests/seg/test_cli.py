"""`styleseg train-seg` and `styleseg segment` through the Typer app."""

from __future__ import annotations

from typer.testing import CliRunner

from styleseg.cli import app


def test_train_seg_dry_run_and_config_typo(tmp_path):
    r = CliRunner().invoke(app, ["train-seg", str(tmp_path), "--out", str(tmp_path / "m"), "--dry-run",
                                 "--epochs", "3"])
    assert r.exit_code == 0, r.output
    assert "epochs = 3" in r.output and "crop = 160" in r.output
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train_seg]\ncrops = 96\n")
    r = CliRunner().invoke(app, ["train-seg", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(cfg)])
    assert r.exit_code == 2 and "did you mean 'crop'" in r.output


def test_segment_cli(tmp_path, toy_model, toy_dataset):
    r = CliRunner().invoke(app, ["segment", str(toy_dataset), "--model", str(toy_model), "--out",
                                 str(tmp_path / "o"), "--num-parts", "2", "--part-id", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").glob("*.nii.gz")) == ["toy01.nii.gz", "toy03.nii.gz"]
    r = CliRunner().invoke(app, ["segment", str(tmp_path / "nope.nii.gz"), "--model", str(toy_model), "--out",
                                 str(tmp_path / "o2")])
    assert r.exit_code == 2 and "does not exist" in r.output
