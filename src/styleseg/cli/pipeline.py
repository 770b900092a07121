"""CLI commands of the whole pipeline: ``styleseg run EXPERIMENT.toml`` and ``styleseg demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from styleseg.cli import esc, handle_errors


def _console():
    import shutil

    from rich.console import Console

    # wide enough for the results table also when the output goes to a log file
    return Console(width=max(120, shutil.get_terminal_size((120, 40)).columns))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard i/n`` (0-based i < n) as (i, n); None when not given."""
    if text is None:
        return None
    from styleseg.errors import ConfigError

    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() or not 0 <= int(i) < int(n):
        raise ConfigError(f"--shard {text!r}: expected i/n with 0 <= i < n (e.g. 0/8; Slurm: "
                          "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(i), int(n)


def _job_summary(con, summary: dict) -> None:
    """What a job run did: paused for the human step, stopped before segmenting, one shard, or finished."""
    import csv

    from rich.table import Table

    if summary.get("paused"):
        con.print(f"[yellow bold]paused:[/] {esc(summary['paused'])}", highlight=False, soft_wrap=True)
        return
    model = summary.get("model", {})
    con.print(f"segmenting model: [bold]{esc(model.get('arm'))}[/] ({esc(model.get('rule'))}): "
              f"{esc(model.get('why', ''))}", highlight=False, soft_wrap=True)
    if summary.get("stopped_before"):
        con.print(f"stopped before {esc(summary['stopped_before'])} (--until); now run the shards "
                  "(--shard i/n), then once without --shard", highlight=False)
        return
    if "shard" in summary:
        for arm, rep in summary["shard"].items():
            con.print(f"shard done, {esc(arm)}: {len(rep['done'])} segmented, {len(rep['skipped'])} done before, "
                      f"{len(rep['failed'])} failed", highlight=False)
        return
    with open(summary["qc"], newline="") as f:
        rows = list(csv.DictReader(f))
    tab = Table(title=f"Quality control, worst first ({len(rows)} cases; all in {summary['qc']})")
    for c in ("case", "score", "style", "flags"):
        tab.add_column(c)
    for r in rows[:15]:
        tab.add_row(esc(r["case"]), r["score"], esc(r["style"]), esc(r["flags"]))
    con.print(tab)


def _print_agreement(con, run_dir: Path) -> None:
    """The same-scan agreement table of RUN/agreement.json, over seeds with CIs where there are several."""
    import json

    from rich.table import Table

    agree = run_dir / "agreement.json"
    if not agree.exists():
        return
    data = json.loads(agree.read_text())
    summ = data.get("summary", {}).get("arms") or {a: {"mean": {s: {"mean": v} for s, v in d.items()}}
                                                    for a, d in data["arms"].items()}
    if not summ:
        return
    structures = list(next(iter(summ.values()))["mean"])
    n_seeds = len(next(iter(data.get("seeds", {}).values()), {})) or 1
    tab = Table(title="Agreement between the two scans of each same-scan pair (Dice of the predictions"
                + (f", mean over {n_seeds} seeds [95% CI]" if n_seeds > 1 else "")
                + "; * = found in neither scan at least once)")
    tab.add_column("arm", no_wrap=True)
    for s in structures:
        tab.add_column(s, justify="right")
    for arm, e in summ.items():
        cells = []
        for s in structures:
            d = e["mean"][s]
            c = f"{d['mean']:.3f}" + (f" [{d['ci_low']:.2f}, {d['ci_high']:.2f}]" if n_seeds > 1 else "")
            cells.append(c + ("*" if e.get("absent", {}).get(s) else ""))
        tab.add_row(esc(arm), *cells)
    con.print(tab)


def _execute(cfg, run_dir: Path, dry_run: bool, shard: tuple[int, int] | None = None,
             until: str | None = None) -> None:
    import time

    from rich.table import Table

    from styleseg.config import dump_toml
    from styleseg.pipeline import results_table
    from styleseg.pipeline.job import PAUSED_EXIT, run_pipeline

    con = _console()
    if dry_run:
        con.print(f"[bold]run folder:[/] {esc(run_dir)}", highlight=False)
        con.print(dump_toml(cfg.resolved()), highlight=False, markup=False)
        return
    t0 = time.time()

    def on_event(stage: str, what: str) -> None:
        con.print(f"[dim]{time.time() - t0:7.0f} s[/]  [bold]{esc(f'{stage:<18}')}[/] {esc(what)}", highlight=False)

    con.print(f"[bold]styleseg[/] {esc(cfg.name)}: run folder {esc(run_dir)} (preset {esc(cfg.preset)}, arms: "
              f"{esc(', '.join(cfg.arms))})", highlight=False)
    summary = run_pipeline(cfg, run_dir, on_event=on_event, shard=shard, until=until)
    if summary.get("all_skipped"):
        con.print("[green]Nothing to do:[/] every stage is up to date for this configuration.")
    if summary.get("job"):
        _job_summary(con, summary)
        if summary.get("paused"):
            raise typer.Exit(PAUSED_EXIT)
        if "report" not in summary:
            return
    rows = results_table(run_dir)
    if rows:
        structures = [k for k in rows[0] if k not in ("arm", "pixel_acc")]
        tab = Table(title="Target test set: mean Dice per structure (pixel accuracy over all voxels last)")
        tab.add_column("arm", no_wrap=True)
        for s in structures:
            tab.add_column(s, justify="right")
        tab.add_column("pixel acc", justify="right")
        for r in rows:
            tab.add_row(esc(r["arm"]),
                        *[f"{r[s]:.3f}" if s in r else "-" for s in structures],
                        f"{r['pixel_acc']:.4f}" if "pixel_acc" in r else "-")
        con.print(tab)
    _print_agreement(con, run_dir)
    for arm, why in summary["skipped_arms"].items():
        con.print(f"[yellow]arm {esc(arm)} skipped:[/] {esc(why)}", highlight=False)
    con.print(f"total {time.time() - t0:.0f} s; report: [bold]{esc(summary['report'])}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``demo``."""

    @app.command("run")
    @handle_errors
    def run_cmd(
        experiment: Path = typer.Argument(..., help="EXPERIMENT.toml (see examples/)."),
        out: Path = typer.Option(None, "--out", "-o", help="Run folder (default: runs/<toml name>)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved plan and config, run nothing."),
        shard: str = typer.Option(None, "--shard", help="Job path: segment part i of n of the collection (0-based "
                                  "i/n) and stop; every earlier stage must be finished (--until segment)."),
        until: str = typer.Option(None, "--until", help="Job path: 'segment' runs every stage before segmenting "
                                  "the collection, then stops (the preparation step of a Slurm array)."),
        jobs: int | None = typer.Option(None, "--jobs", "-j", help="U-Nets trained at once in worker processes "
                                        "(default: the experiment's `jobs`, 1)."),
    ) -> None:
        """Run every stage of an experiment; finished stages with the same config are skipped.

        A target without labels takes the job path (docs/job.md): the whole collection is segmented, and the
        run pauses (exit status 3) until the style slices' label maps are corrected.

        Example: styleseg run examples/phantom.toml --out runs/phantom
        Example: styleseg run examples/unannotated.toml --out runs/unannotated
        """
        from styleseg.pipeline import load_experiment

        cfg = load_experiment(experiment, {"jobs": jobs} if jobs is not None else None)
        _execute(cfg, out or Path("runs") / experiment.stem, dry_run, parse_shard(shard), until)

    @app.command("demo")
    @handle_errors
    def demo_cmd(
        out: Path = typer.Option(Path("demo-run"), "--out", "-o", help="Run folder."),
        preset: str = typer.Option("quick", help="quick (2 CPU cores, <= 10 min) or paper (GPU)."),
        arms: str = typer.Option("", help="Comma-separated arms (default: baseline, reference, styleseg_ft_ref, "
                                 "oracle_ft_ref; examples/phantom.toml runs every arm)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved plan and config, run nothing."),
    ) -> None:
        """Build the built-in phantom benchmark and run the whole experiment on it.

        Example: styleseg demo --out demo-run
        """
        from styleseg.pipeline import demo_config

        cfg = demo_config(preset, tuple(a.strip() for a in arms.split(",") if a.strip()) or None)
        _execute(cfg, out, dry_run)
