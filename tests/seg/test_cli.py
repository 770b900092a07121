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


def test_segment_cli_precision_layout_and_whole_slice_reach_the_predictor(tmp_path, toy_model, toy_dataset,
                                                                          monkeypatch):
    import styleseg.seg.segment as seg_module

    seen: list[dict] = []
    real = seg_module.Predictor

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_module, "Predictor", spy)
    base = ["segment", str(toy_dataset), "--model", str(toy_model)]
    assert CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a")]).exit_code == 0
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b"), "--whole-slice", "--precision", "float32",
                                 "--no-channels-last"])
    assert r.exit_code == 0, r.output
    assert [(k["dtype"], k["channels_last"], k["crop"]) for k in seen] == [("auto", True, True),
                                                                          ("float32", False, False)]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "c"), "--precision", "fp16"])
    assert r.exit_code == 2 and "--precision 'fp16'" in r.output
    assert not (tmp_path / "c").exists() and len(seen) == 2
