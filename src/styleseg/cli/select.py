"""CLI commands for style-slice selection (registered on the main app by styleseg.cli)."""

from __future__ import annotations

from pathlib import Path

import typer

from styleseg.cli import esc, handle_errors


def parse_slices(text: str) -> list[tuple[str, int]]:
    """``"T003:4,T007:12"`` -> [("T003", 4), ("T007", 12)]; bad items raise ConfigError."""
    from styleseg.errors import ConfigError

    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        case, sep, idx = item.rpartition(":")
        if not sep or not case or not idx.strip().lstrip("-").isdigit():
            raise ConfigError(f"--slices item {item!r} is not CASE:INDEX (e.g. T003:4)")
        out.append((case.strip(), int(idx)))
    if not out:
        raise ConfigError("--slices is empty; give CASE:INDEX pairs separated by commas")
    return out


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""

    @app.command("pick-styles")
    @handle_errors
    def pick_styles_cmd(
        target: Path = typer.Argument(..., help="Target (unannotated) dataset folder."),
        n: int = typer.Option(6, "-n", help="Number of style slices (the paper uses 6)."),
        out: Path = typer.Option(..., "--out", "-o", help="Style-set folder to write."),
        slices: str | None = typer.Option(None, "--slices",
                                          help="Manual choice instead: CASE:INDEX,... (slice index in the case)."),
        labels_from: Path | None = typer.Option(None, "--labels-from",
                                                help="Segmentation model folder to predict missing label maps."),
        exclude_cases: list[str] = typer.Option([], "--exclude-cases", help="Case ids to leave out (repeatable, "
                                                "or comma-separated)."),
        candidates_per_case: int | None = typer.Option(None, "--candidates-per-case",
                                                       help="Central slices per case to consider."),
        preset: str = typer.Option("quick", "--preset", help="quick | paper."),
        seed: int = typer.Option(0, "--seed"),
        no_vgg: bool = typer.Option(False, "--no-vgg", help="NPS descriptors only (no VGG-19 Gram statistics)."),
        require_labels: bool = typer.Option(False, "--require-labels",
                                            help="Fail if a style slice ends up without a label map."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved settings and stop."),
    ) -> None:
        """Choose n style slices covering the textures of TARGET (k-medoids on NPS + VGG Gram descriptors).

        Example: styleseg pick-styles data/target -n 6 --out styles/ ;
        manual: styleseg pick-styles data/target --slices T003:40,T007:52 --out styles/
        """
        import json

        from rich.console import Console
        from rich.table import Table

        from styleseg.config import given, resolve, to_dict
        from styleseg.style.select import SelectConfig, pick_styles

        con = Console()
        manual = parse_slices(slices) if slices else None
        excl = [c.strip() for e in exclude_cases for c in e.split(",") if c.strip()]
        cfg = resolve(SelectConfig, preset, given(candidates_per_case=candidates_per_case,
                                                  use_vgg=False if no_vgg else None), where="pick-styles")
        if dry_run:
            eff = cfg
            con.print_json(json.dumps({"target": str(target), "n": n, "out": str(out), "manual": manual,
                                       "labels_from": None if labels_from is None else str(labels_from),
                                       "exclude_cases": excl, "seed": seed, "config": to_dict(eff)}))
            return
        sset = pick_styles(target, n, out, manual=manual, labels_from=labels_from, seed=seed, exclude_cases=excl,
                           require_labels=require_labels, overwrite=overwrite, config=cfg)
        tab = Table(title=f"{len(sset)} style slices ({sset.method})")
        for col in ("style", "case", "slice", "cluster", "label", "why"):
            tab.add_column(col, overflow="fold")
        for s in sset.styles:
            tab.add_row(str(s.index), esc(s.case_id), str(s.slice), str(s.cluster_size),
                        esc(s.label_source) if s.label_source else "[red]none[/]", esc(s.why))
        con.print(tab)
        t = sset.extras.get("timings_s", {})
        if t:
            con.print(f"time: {t.get('total_s', 0):.1f} s " + ", ".join(f"{k}={v:.1f}" for k, v in t.items()
                                                                         if k != "total_s"))
        con.print(f"wrote {out}/styles.json and {out}/contact_sheet.png", highlight=False, markup=False)
        predicted = [s for s in sset.styles if s.label_source and s.label_source.startswith("model:")]
        if predicted:
            names = ", ".join(f"style_{s.index:02d}_label.nii.gz" for s in predicted)
            con.print(f"[yellow]label maps predicted by a model: {esc(names)}. Check and correct them (e.g. in 3D "
                      f"Slicer over style_KK_image.nii.gz) before `styleseg train-styles`.[/]")
        missing = [s for s in sset.styles if s.label is None]
        if missing:
            con.print(f"[yellow]{len(missing)} style slice(s) have no label map; generator training needs one for "
                      "each: pass --labels-from MODEL, or draw them as style_KK_label.nii.gz and set \"label\" "
                      "in styles.json.[/]")
