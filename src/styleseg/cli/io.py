"""CLI commands of the io area: ``styleseg import`` and ``styleseg info``.

Their tables keep every cell whole: printed to a pipe or a log (where rich would assume 80 columns and cut a
case id to ``LUNG1-00…``) they are as wide as their content, and on a narrow terminal a long cell folds onto
the next line instead of losing characters. ``styleseg info --json`` is the machine-readable form.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from styleseg.cli import esc, handle_errors

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from styleseg.io.dataset import Dataset

PIPE_WIDTH = 10_000  # columns of output that is not a terminal: wide enough that no table wraps or cuts


def _console() -> Console:
    """The console for a command's tables: the terminal's width on a terminal, :data:`PIPE_WIDTH` otherwise."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def _table(title: str, columns: list[str]) -> Table:
    """A table whose cells fold rather than being cut with an ellipsis when the console is too narrow."""
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")
    return t


def register(app: typer.Typer) -> None:
    """Add this area's commands to app."""

    @app.command("import")
    @handle_errors
    def import_cmd(
        sources: list[Path] = typer.Argument(..., help="DICOM folder trees (CT + RTSTRUCT/SEG) and/or NIfTI "
                                             "images or folders (X_ct.nii.gz [+ X_labels.nii.gz])."),
        out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (nnU-Net v2 raw layout)."),
        structures: Path | None = typer.Option(None, "--structures", help="MAP.toml with a [structures] table: "
                                               '"raw ROI name" = "schema structure".'),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and list bad inputs instead of stopping."),
        cases_json: Path | None = typer.Option(None, "--cases-json", help="JSON listing each NIfTI case's annotated "
                                               "structures (default: a cases.json beside the images)."),
        pair: list[str] = typer.Option([], "--pair", help="Explicit NIfTI pair IMAGE,LABEL (repeatable)."),
        no_body: bool = typer.Option(False, "--no-body", help="Do not derive the body label from the image."),
        name: str | None = typer.Option(None, "--name", help="Dataset name (default: the folder name)."),
        allow_unusual_hu: bool = typer.Option(False, "--allow-unusual-hu", help="Accept CT whose values do not "
                                              "look like Hounsfield units (no air in view, e.g. a tight crop)."),
    ) -> None:
        """Import clinical CT into a dataset.

        Example: styleseg import ../shared/data/dicom/LUNG1-005 --out data/lung005
        """
        from styleseg.errors import InputError
        from styleseg.io.importer import import_sources, load_structure_map

        srcs: list = list(sources)
        for p in pair:
            parts = p.split(",")
            if len(parts) != 2:
                raise InputError(None, f"--pair {p!r} must be IMAGE,LABEL", "e.g. --pair a_ct.nii.gz,a_seg.nii.gz")
            srcs.append((Path(parts[0]), Path(parts[1])))
        rep = import_sources(srcs, out, structure_map=load_structure_map(structures), skip_bad=skip_bad,
                             derive_body=not no_body, name=name, cases_json=cases_json,
                             allow_unusual_hu=allow_unusual_hu)
        con = _console()
        t = _table(f"imported into {esc(rep.out)}", ["case", "source", "shape (z,y,x)", "annotated", "derived"])
        for c in rep.cases:
            t.add_row(esc(c.case_id), c.source, "x".join(map(str, c.shape)), ", ".join(c.annotated) or "-",
                      ", ".join(c.derived) or "-")
        con.print(t)
        for p, why in rep.skipped:
            con.print(f"[yellow]skipped[/] {esc(p)}: {esc(why)}", highlight=False, soft_wrap=True)
        if rep.ignored:
            con.print(f"{len(rep.ignored)} non-DICOM files ignored (e.g. {rep.ignored[0]})", highlight=False,
                      markup=False, soft_wrap=True)

    @app.command("info")
    @handle_errors
    def info_cmd(
        dataset: Path = typer.Argument(..., help="A dataset folder."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table: the dataset's name, "
                                     "labels and per case id, shape_zyx, spacing_xyz_mm, scanner tags, kernel, "
                                     "labels (labelsTr/labelsRef/null), annotated, derived."),
    ) -> None:
        """Show a dataset's cases: size, spacing, scanner/kernel, annotated structures.

        Example: styleseg info data/lung005 (or --json | jq '.cases[].id')
        """
        import json

        from styleseg.io.dataset import Dataset

        ds = Dataset(dataset)
        info = dataset_info(ds)
        if as_json:
            typer.echo(json.dumps(info, indent=1))
            return
        t = _table(f"{esc(ds.name)}: {len(ds)} cases, labels {esc(ds.schema.to_labels_dict())}",
                   ["case", "shape (z,y,x)", "spacing (mm)", "scanner", "kernel", "labels", "annotated"])
        for c in info["cases"]:
            scanner = " ".join(str(c["scanner"][k]) for k in ("Manufacturer", "ManufacturerModelName")
                               if k in c["scanner"]) or "-"
            ann = ", ".join(f"{a}*" if a in c["derived"] else a for a in c["annotated"]) or "-"
            t.add_row(esc(c["id"]), "x".join(map(str, c["shape_zyx"])),
                      "x".join(f"{s:.3g}" for s in c["spacing_xyz_mm"]), esc(scanner), esc(str(c["kernel"] or "-")),
                      c["labels"] or "-", ann)
        con = _console()
        con.print(t)
        con.print("* derived from the image, not drawn", highlight=False)


def dataset_info(ds: Dataset) -> dict[str, Any]:
    """What ``styleseg info`` shows of a :class:`~styleseg.io.dataset.Dataset`, as plain JSON-able data.

    Shapes and spacings come from the NIfTI headers only (no volume is read)."""
    cases = []
    for c in ds:
        shape, spacing = _grid(ds.existing_image(c.case_id))
        sc = c.extras.get("scanner")
        sc = sc if isinstance(sc, dict) else {}
        cases.append({"id": c.case_id, "shape_zyx": shape, "spacing_xyz_mm": spacing, "scanner": dict(sc),
                      "kernel": sc.get("ConvolutionKernel"), "labels": c.labels, "annotated": list(c.annotated),
                      "derived": list(c.derived)})
    return {"name": ds.name, "path": str(ds.root), "labels": ds.schema.to_labels_dict(), "n_cases": len(cases),
            "cases": cases}


def _grid(path: Path) -> tuple[list[int], list[float]]:
    """Shape (z, y, x) and spacing (x, y, z, mm) of a NIfTI image from its header only (fast).

    NIfTI stores spacing as float32: it is given to float32's 7 significant digits (0.7, not 0.699999988)."""
    import SimpleITK as sitk

    from styleseg.errors import InputError

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(path, f"cannot read the NIfTI header: {str(e).strip().splitlines()[-1]}",
                         "re-export the file, or re-create the dataset") from e
    return [int(n) for n in r.GetSize()[::-1]], [float(f"{s:.7g}") for s in r.GetSpacing()]
