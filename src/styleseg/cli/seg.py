"""CLI commands of the seg area: `styleseg train-seg` and `styleseg segment`."""

from __future__ import annotations

from pathlib import Path

import typer

from styleseg.cli import esc, handle_errors


def register(app: typer.Typer) -> None:
    """Add this area's commands to app."""

    @app.command("train-seg")
    @handle_errors
    def train_seg(
        datasets: list[Path] = typer.Argument(..., help="Annotated dataset folder(s), e.g. source + augmented."),
        out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
        preset: str = typer.Option("quick", help="quick (CPU, minutes) or paper (GPU)."),
        config: Path | None = typer.Option(None, help="TOML file with [train_seg] settings over the preset."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run exactly."),
        init_from: Path | None = typer.Option(None, "--init-from", help="Model folder (train-seg) to start from: "
                                              "fine-tune its weights instead of a random initialisation."),
        val_case: list[str] = typer.Option([], "--val-case", help="Validation case (repeat); default: seeded split."),
        no_val: bool = typer.Option(False, "--no-val", help="Train on every case; keep the last epoch."),
        epochs: int | None = typer.Option(None, help="Override the number of epochs."),
        downsample: int | None = typer.Option(None, help="Low-resolution comparison arm only (default 1: native)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    ) -> None:
        """Train the U-Net (Dice + CE, partial labels as unknown) at native pixel spacing.

        Example: styleseg train-seg data/source data/augmented --out models/unet2 --preset quick
        Fine-tuning: styleseg train-seg data/source data/augmented --init-from models/unet1 --out models/unet2ft
        Multi-GPU: torchrun --nproc_per_node 4 $(which styleseg) train-seg DATASET --out MODEL --preset paper
        """
        from rich.console import Console

        from styleseg.config import dump_toml, given, load_toml, resolve, to_dict
        from styleseg.seg.train import SegTrainConfig, train_segmentation

        from_file = load_toml(config).get("train_seg", {}) if config is not None else None
        cfg = resolve(SegTrainConfig, preset, from_file, given(epochs=epochs, downsample=downsample),
                      where=f"{config} [train_seg]" if config is not None else "train-seg")
        con = Console()
        if dry_run:
            con.print(dump_toml({"train_seg": to_dict(cfg)}), markup=False, highlight=False)
            return
        vc = [] if no_val else (val_case or None)
        folder = train_segmentation(datasets, out, cfg, resume=resume, val_cases=vc, init_from=init_from)
        con.print(f"[green]model written to[/] {esc(folder)}", highlight=False)

    @app.command("segment")
    @handle_errors
    def segment_cmd(
        inputs: list[Path] = typer.Argument(..., help="NIfTI files, DICOM series folders or dataset folders."),
        model: Path = typer.Option(..., "--model", "-m", help="Segmentation model folder (train-seg)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: OUT/<case>.nii.gz."),
        continue_: bool = typer.Option(False, "--continue", help="Skip cases whose output exists."),
        part_id: int = typer.Option(0, "--part-id", help="This shard (0-based)."),
        num_parts: int = typer.Option(1, "--num-parts", help="Number of shards (cases by sorted index mod N)."),
        shard: str = typer.Option(None, "--shard", help="i/n: the same as --part-id i --num-parts n."),
        dicom_seg: bool = typer.Option(False, "--dicom-seg",
                                       help="Also write OUT/<case>.dcm, a DICOM SEG (DICOM series inputs only)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
        batch_size: int = typer.Option(8, help="Slices per forward pass."),
        precision: str = typer.Option("auto", "--precision", help="auto (bfloat16 autocast where the device "
                                      "computes it natively: GPUs, CPUs with AVX512-BF16 or AMX; else float32), "
                                      "float32 or bfloat16."),
        bf16: bool = typer.Option(False, "--bf16", help="The same as --precision bfloat16."),
        channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                           help="NHWC memory layout (faster with oneDNN in either precision)."),
        whole_slice: bool = typer.Option(False, "--whole-slice", help="Run the network on the whole slice "
                                         "(default: on the box around the body, ~half the work on a chest CT)."),
        force_spacing: bool = typer.Option(False, "--force-spacing", help="Run on inputs > 2x off the training "
                                           "pixel spacing."),
        allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="Use a model whose training has not "
                                              "finished (its best epoch so far)."),
        no_resample: bool = typer.Option(False, "--no-resample", help="Keep each slice's native pixel spacing "
                                         "(default: resampled to the model's training spacing when > 10 % off)."),
    ) -> None:
        """Segment CT volumes with a trained U-Net (streaming, resumable, shardable).

        Example: styleseg segment data/target --model models/unet2 --out preds --continue --shard 0/4
        """
        from rich.console import Console

        from styleseg.cli.pipeline import parse_shard
        from styleseg.errors import ConfigError
        from styleseg.seg.segment import segment

        if shard is not None:
            part_id, num_parts = parse_shard(shard)  # type: ignore[misc]
        if precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"--precision {precision!r}: choose auto, float32 or bfloat16")
        rep = segment(inputs, model, out, continue_=continue_, part_id=part_id, num_parts=num_parts,
                      dicom_seg=dicom_seg, device=device, batch_size=batch_size,
                      dtype="bfloat16" if bf16 else precision, channels_last=channels_last,
                      force_spacing=force_spacing, allow_incomplete=allow_incomplete, resample=not no_resample,
                      crop=not whole_slice)
        con = Console()
        con.print(f"[green]{len(rep.done)} segmented[/], {len(rep.skipped)} skipped (done before), "
                  f"[red]{len(rep.failed)} failed[/] -> {esc(rep.out)} ({rep.slices} slices, {rep.seconds:.1f} s)")
        for cid, msg in rep.failed.items():
            con.print(f"  [red]{esc(cid)}[/]: {esc(msg)}", highlight=False, soft_wrap=True)
        if rep.failed:
            raise typer.Exit(1)
