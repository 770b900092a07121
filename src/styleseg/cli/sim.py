"""CLI commands of the sim area: ``styleseg simulate`` and ``styleseg make-benchmark``."""

from __future__ import annotations

from pathlib import Path

import typer

from styleseg.cli import esc, handle_errors


def register(app: typer.Typer) -> None:
    """Add this area's commands to app."""

    @app.command("simulate")
    @handle_errors
    def simulate_cmd(
        dataset: Path = typer.Argument(..., help="Dataset folder to re-image (labels are carried over)."),
        out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create."),
        protocol: str | None = typer.Option(None, "--protocol", "-p", help="Protocol name from the table "
                                            "(styleseg.sim.scanner.PROTOCOLS), e.g. low-dose-sharp."),
        dose_fraction: float | None = typer.Option(None, "--dose-fraction", help="Dose as a fraction of the "
                                                   "reference, in (0, 1]."),
        kernel: str | None = typer.Option(None, "--kernel", "-k", help="Kernel: smooth, standard, sharp, lung."),
        seed: int = typer.Option(0, "--seed", help="Noise seed."),
        input_kind: str = typer.Option("auto", "--input", help="auto (phantom datasets: noise-free), clean "
                                       "(simulate all noise) or real (insert only the extra noise)."),
    ) -> None:
        """Re-image a dataset as if acquired with another dose / reconstruction kernel.

        Example: styleseg simulate data/nsclc --dose-fraction 0.1 --kernel sharp --out data/nsclc-ld-sharp
        """
        from rich.console import Console

        from styleseg.errors import ConfigError
        from styleseg.sim.benchmark import simulate_dataset

        kinds = {"auto": None, "clean": True, "real": False}
        if input_kind not in kinds:
            raise ConfigError(f"--input must be one of {', '.join(kinds)}, got {input_kind!r}")
        path = simulate_dataset(dataset, out, protocol, dose_fraction, kernel, seed, kinds[input_kind])
        Console().print(f"re-imaged dataset written to [bold]{esc(path)}[/]", highlight=False)

    @app.command("make-benchmark")
    @handle_errors
    def make_benchmark_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="Folder to create (holds source/ and target/)."),
        preset: str = typer.Option("quick", "--preset", help="quick (CPU minutes, 320x320) or paper (512x512)."),
        seed: int = typer.Option(0, "--seed", help="Seed of patients and noise."),
    ) -> None:
        """Write the built-in phantom benchmark: an annotated source set and a lower-dose target set.

        Example: styleseg make-benchmark --out data/bench --preset quick
        """
        import time

        from rich.console import Console

        from styleseg.sim.benchmark import make_benchmark

        t0 = time.perf_counter()
        src, tgt = make_benchmark(out, preset, seed)
        Console().print(f"source: [bold]{esc(src)}[/]\ntarget: [bold]{esc(tgt)}[/] ({time.perf_counter() - t0:.0f} s)",
                        highlight=False)
