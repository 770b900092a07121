"""CLI commands of the eval area: ``styleseg evaluate`` and ``styleseg report``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from styleseg.cli import esc, handle_errors


def _fmt_ci(d: dict[str, Any] | None, digits: int = 3) -> str:
    if not d or d.get("mean") is None or d["mean"] != d["mean"]:
        return "-"
    return f"{d['mean']:.{digits}f} [{d['ci_low']:.{digits}f}, {d['ci_high']:.{digits}f}]"


def print_metrics_table(res: dict[str, Any]) -> None:
    """A rich table of means with 95% CIs (and the paired difference when a comparison exists)."""
    from rich.console import Console
    from rich.table import Table

    cmp_ = res.get("comparison")
    t = Table(title=f"{len(res['cases'])} case(s), mean [95% CI]")
    for col in ("structure", "Dice", "IoU", "HD95 mm", "n"):
        t.add_column(col)
    if cmp_:
        t.add_column("ΔDice vs compare [CI]")
        t.add_column("Wilcoxon p")
    for s, m in res["mean"].items():
        row = [s, _fmt_ci(m.get("dice")), _fmt_ci(m.get("iou")), _fmt_ci(m.get("hd95"), 2), str(m["dice"]["n"])]
        if cmp_:
            c = cmp_["structures"].get(s, {}).get("dice")
            row += [_fmt_ci({"mean": c["mean_diff"], "ci_low": c["ci_low"], "ci_high": c["ci_high"]}) if c else "-",
                    "-" if not c or c["p_wilcoxon"] is None or c["p_wilcoxon"] != c["p_wilcoxon"]
                    else f"{c['p_wilcoxon']:.3g}"]
        t.add_row(*row)
    for k in ("all", "foreground"):
        row = [f"pixel accuracy ({k})", _fmt_ci(res["pixel_accuracy"][k], 4), "", "",
               str(res["pixel_accuracy"][k]["n"])]
        if cmp_:
            c = cmp_["pixel_accuracy"][k]
            row += [_fmt_ci({"mean": c["mean_diff"], "ci_low": c["ci_low"], "ci_high": c["ci_high"]}, 4), ""]
        t.add_row(*row)
    con = Console()
    con.print(t)
    if res.get("missing"):
        con.print(f"[yellow]not evaluated (no prediction):[/] {esc(', '.join(res['missing']))}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this area's commands to app."""

    @app.command("evaluate")
    @handle_errors
    def evaluate_cmd(
        pred: Path = typer.Option(..., "--pred", help="Folder of predicted label volumes PRED/<case>.nii.gz."),
        ref: Path = typer.Option(..., "--ref", help="Reference dataset (labelsTr or labelsRef)."),
        out: Path | None = typer.Option(None, "--out", help="Write metrics.json here."),
        compare: Path | None = typer.Option(None, "--compare",
                                            help="Second prediction folder: paired difference pred - compare."),
        cases: list[str] | None = typer.Option(None, "--case", help="Evaluate only these cases (repeatable)."),
        n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples for the 95% CIs."),
        seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    ) -> None:
        """Dice, IoU, HD95 (mm) and pixel accuracy per case and structure, means with bootstrap CIs.

        Example: styleseg evaluate --pred runs/r1/arms/styleseg/pred --ref data/target --out metrics.json
        --compare runs/r1/arms/baseline/pred
        """
        from styleseg.eval.evaluate import evaluate

        res = evaluate(pred, ref, out=out, compare=compare, cases=cases or None, n_boot=n_boot, seed=seed)
        print_metrics_table(res)
        if out is not None:
            typer.echo(f"wrote {out}")

    @app.command("report")
    @handle_errors
    def report_cmd(
        run_dir: Path = typer.Argument(..., help="Run folder (RUN/arms/<arm>/..., RUN/run.json; see docs/eval.md)."),
        out: Path | None = typer.Option(None, "--out", help="Output HTML (default RUN_DIR/report.html)."),
    ) -> None:
        """One self-contained HTML report: metric tables, CI bars, paired differences, figures, curves.

        Example: styleseg report runs/demo --out runs/demo/report.html
        """
        from styleseg.eval.report import write_report

        path = write_report(run_dir, out)
        typer.echo(f"wrote {path}")
