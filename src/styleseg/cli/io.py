"""CLI commands of the io area: ``styleseg import`` and ``styleseg info``."""

from __future__ import annotations

from pathlib import Path

import typer

from styleseg.cli import esc, handle_errors


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
        from rich.console import Console
        from rich.table import Table

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
        con = Console()
        t = Table(title=f"imported into {esc(rep.out)}")
        for col in ("case", "source", "shape (z,y,x)", "annotated", "derived"):
            t.add_column(col)
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
    def info_cmd(dataset: Path = typer.Argument(..., help="A dataset folder.")) -> None:
        """Show a dataset's cases: size, spacing, scanner/kernel, annotated structures.

        Example: styleseg info data/lung005
        """
        from rich.console import Console
        from rich.table import Table

        from styleseg.io.dataset import Dataset

        ds = Dataset(dataset)
        t = Table(title=f"{esc(ds.name)}: {len(ds)} cases, labels {esc(ds.schema.to_labels_dict())}")
        for col in ("case", "shape (z,y,x)", "spacing (mm)", "scanner", "kernel", "labels", "annotated"):
            t.add_column(col)
        for c in ds:
            shape, spacing = _grid(ds.existing_image(c.case_id))
            sc = c.extras.get("scanner")
            sc = sc if isinstance(sc, dict) else {}
            scanner = " ".join(str(sc[k]) for k in ("Manufacturer", "ManufacturerModelName") if k in sc) or "-"
            ann = ", ".join(f"{a}*" if a in c.derived else a for a in c.annotated) or "-"
            t.add_row(esc(c.case_id), shape, spacing, esc(scanner), esc(sc.get("ConvolutionKernel", "-")),
                      c.labels or "-", ann)
        con = Console()
        con.print(t)
        con.print("* derived from the image, not drawn", highlight=False)


def _grid(path: Path) -> tuple[str, str]:
    """Shape and spacing of a NIfTI image from its header only (fast)."""
    import SimpleITK as sitk

    from styleseg.errors import InputError

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(path, f"cannot read the NIfTI header: {str(e).strip().splitlines()[-1]}",
                         "re-export the file, or re-create the dataset") from e
    size = r.GetSize()[::-1]
    return "x".join(map(str, size)), "x".join(f"{s:.3g}" for s in r.GetSpacing())
