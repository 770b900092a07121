"""Messages and printed data are plain text: `[train_seg]`, `[structures]`, `[/evil]` survive as written."""

from __future__ import annotations

import numpy as np
from rel_helpers import body_ct, expect_error, write_ct_dicom, write_ct_nifti
from typer.testing import CliRunner

from styleseg.cli import app


def test_section_names_survive_in_config_errors(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train_seg]\nepochz = 3\n")
    line = expect_error(["train-seg", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(cfg),
                         "--dry-run"], input="TOML `[train_seg]` with a misspelt key",
                        contains=[f"{cfg} [train_seg]: unknown key 'epochz'", "did you mean 'epochs'"],
                        left="nothing written", tmp=tmp_path)
    assert line.startswith("error: ")


def test_dry_run_prints_section_headers(tmp_path):
    r = CliRunner().invoke(app, ["train-seg", str(tmp_path), "--out", str(tmp_path / "m"), "--dry-run"])
    assert r.exit_code == 0 and "[train_seg]" in r.stdout, r.output


def test_structures_table_named_in_map_error(tmp_path):
    write_ct_nifti(tmp_path / "src" / "a_ct.nii.gz")
    m = tmp_path / "MAP.toml"
    m.write_text('[structures]\n"GTV" = 3\n')
    expect_error(["import", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--structures", str(m)],
                 input="MAP.toml `[structures]` value not a string",
                 contains=[str(m), "[structures] table", '"LUNG_TOTAL_L" = "lung_left"'],
                 left="nothing at --out", tmp=tmp_path)
    assert not (tmp_path / "ds").exists()


def test_markup_in_a_path_is_printed_not_parsed(tmp_path):
    missing = tmp_path / "[/evil]" / "[bold]x"
    expect_error(["import", str(missing), "--out", str(tmp_path / "ds")], input="SOURCE path containing `[/evil]`",
                 contains=[f"{missing}: does not exist"], left="nothing at --out", tmp=tmp_path)


def test_markup_in_dicom_tags_is_printed_not_parsed(tmp_path):
    write_ct_dicom(tmp_path / "s", body_ct(), Manufacturer="[/evil]", ConvolutionKernel="[red]B30f")
    r = CliRunner().invoke(app, ["import", str(tmp_path / "s"), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["info", str(tmp_path / "ds")])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "[/evil]" in r.stdout and "[red]B30f" in r.stdout


def test_skipped_inputs_with_markup_in_their_path_are_listed(tmp_path):
    good = tmp_path / "src" / "good"
    write_ct_dicom(good, body_ct())
    bad = tmp_path / "src" / "[/evil]"  # a folder "[" holding a folder "evil]"
    bad.mkdir(parents=True)
    (bad / "x.dcm").write_bytes(b"\x00" * 64)  # claims to be DICOM and is not
    r = CliRunner().invoke(app, ["import", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--skip-bad"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert f"skipped {bad / 'x.dcm'}" in " ".join(r.stdout.split())


def test_error_printer_keeps_brackets_and_one_line(monkeypatch, tmp_path):
    """Any InputError text, newlines included, prints as one plain line."""
    import styleseg.io.importer as importer
    from styleseg.errors import InputError

    def boom(*a, **k):
        raise InputError(tmp_path / "[x]", "first line\nsecond [/y] line", "do [b]this[/b]")

    monkeypatch.setattr(importer, "import_sources", boom)
    write_ct_nifti(tmp_path / "a_ct.nii.gz", np.asarray(body_ct()))
    line = expect_error(["import", str(tmp_path / "a_ct.nii.gz"), "--out", str(tmp_path / "ds")],
                        input=None, contains=[], left="nothing at --out",
                        tmp=tmp_path)
    assert line == f"error: {tmp_path / '[x]'}: first line second [/y] line (fix: do [b]this[/b])"


def test_printer_formats_os_errors(monkeypatch, tmp_path):
    """OSErrors that escape a command (an output that exists, a folder that cannot be made) print as the
    same one line, naming the file."""
    import errno

    import styleseg.io.importer as importer

    errors = [FileExistsError(errno.EEXIST, "already exists", str(tmp_path / "ds")),
              PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))]
    want = [f"error: {tmp_path / 'ds'}: already exists (fix: choose another --out, or remove it first)",
            f"error: {tmp_path / 'x'}: Permission denied (fix: check the path, its permissions and the free disk "
            "space)"]
    for err, line in zip(errors, want, strict=True):
        def boom(*a, _err=err, **k):
            raise _err

        monkeypatch.setattr(importer, "import_sources", boom)
        assert expect_error(["import", str(tmp_path), "--out", str(tmp_path / "ds")], input=None, contains=[],
                            left="") == line
