"""CLI commands of the style area: ``train-styles`` and ``augment`` (registered on the main app by styleseg.cli)."""

from __future__ import annotations

from pathlib import Path

import typer

from styleseg.cli import esc, handle_errors


def register(app: typer.Typer) -> None:
    """Add this area's commands to app."""

    @app.command("train-styles")
    @handle_errors
    def train_styles_cmd(
        source: Path = typer.Argument(..., help="Annotated source dataset folder."),
        styles: Path = typer.Argument(..., help="Style-set folder (from `styleseg pick-styles`)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the generator model folders."),
        preset: str = typer.Option("quick", "--preset", help="quick (CPU minutes) | paper (GPU)."),
        conditional: bool = typer.Option(False, "--conditional", help="One conditional generator for all styles."),
        label_maps_only: bool = typer.Option(False, "--label-maps-only", help="The paper's generator: label maps "
                                             "in, the source slice not read (default: read and passed through)."),
        steps: int | None = typer.Option(None, "--steps", help="Training steps per generator (overrides preset)."),
        crop: int | None = typer.Option(None, "--crop", help="Crop size at native spacing (overrides preset)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:1 ..."),
        bf16: bool | None = typer.Option(None, "--bf16/--no-bf16", help="bfloat16 autocast (default: preset)."),
        seed: int = typer.Option(0, "--seed"),
        resume: bool = typer.Option(False, "--resume", help="Continue from checkpoints (of the same settings); skip "
                                    "finished generators."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and stop."),
    ) -> None:
        """Train one style generator per style slice (or one conditional generator) on the source label maps.

        Example: styleseg train-styles data/source styles/ --out gens/ --preset quick
        """
        import json

        from rich.console import Console

        from styleseg.config import given, resolve, to_dict
        from styleseg.style.train import GeneratorConfig, train_generators
        from styleseg.style.train_config import PAPER_ARCH

        paper = PAPER_ARCH if label_maps_only else None
        cfg = resolve(GeneratorConfig, preset, {"conditional": conditional, "device": device, "seed": seed}, paper,
                      given(steps=steps, epochs=0 if steps is not None else None, crop=crop, bf16=bf16),
                      where="train-styles")
        con = Console()
        if dry_run:
            con.print_json(json.dumps({"source": str(source), "styles": str(styles), "out": str(out),
                                       "config": to_dict(cfg)}))
            return
        folders = train_generators(source, styles, out, cfg, resume=resume)
        for f in folders:
            con.print(f"[green]generator[/] {esc(f)}", highlight=False)

    @app.command("augment")
    @handle_errors
    def augment_cmd(
        source: Path = typer.Option(..., "--source", "-s", help="Annotated source dataset folder."),
        generators: list[Path] = typer.Option(..., "--generators", "-g",
                                              help="Generator folder(s), or the --out folder of train-styles."),
        out: Path = typer.Option(..., "--out", "-o", help="Augmented dataset folder to write (must not exist)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the generators' noise."),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Every source label map through every generator: an m x (n+1) dataset (nnU-Net raw layout).

        Example: styleseg augment --source data/source --generators gens/ --out data/aug
        """
        from rich.console import Console

        from styleseg.io.dataset import Dataset
        from styleseg.style.augment import augment

        gens: list[Path] | Path = generators[0] if len(generators) == 1 else list(generators)
        path = augment(source, gens, out, seed=seed, device=device)
        Console().print(f"[green]augmented dataset[/] {esc(path)} ({len(Dataset(path))} cases)", highlight=False)
