"""The ``styleseg`` command: one thin command per pipeline stage (ARCHITECTURE.md).

Commands only parse arguments, call the Python API and print. Heavy imports (torch, SimpleITK) happen
inside the commands so ``styleseg --help`` stays fast. Each area registers its commands from its own
module (``cli/io.py``, ``cli/sim.py``, ...); :func:`handle_errors` turns a :class:`StylesegError` into
a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from styleseg import __version__

app = typer.Typer(
    name="styleseg",
    help="Segment unannotated CT across texture shift with style-generator data augmentation "
         "(Bhosale et al. 2023). Stages: import -> pick-styles -> train-styles -> augment -> train-seg -> "
         "segment -> evaluate -> report; `styleseg run EXPERIMENT.toml` runs them all, `styleseg demo` "
         "runs them on the built-in phantom benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Decorator for commands: user errors -> one plain line ``error: ...`` on stderr, exit code 2.

    Besides :class:`StylesegError`, an OSError that escapes a command (a folder that cannot be created,
    a disk that fills up) is an environment problem, not a bug: it is printed the same way.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from styleseg.errors import StylesegError

        try:
            return fn(*args, **kwargs)
        except StylesegError as e:
            print_error(str(e))
            raise typer.Exit(2) from None
        except FileExistsError as e:  # an output that must not be overwritten
            where = e.filename or (e.args[0] if len(e.args) == 1 else None)
            print_error(f"{where}: already exists (fix: choose another --out, or remove it first)" if where
                        else str(e))
            raise typer.Exit(2) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            print_error(f"{where}{e.strerror or e} (fix: check the path, its permissions and the free disk space)")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_error(message: str) -> None:
    """Print ``error: MESSAGE`` to stderr as one line of plain text (a red prefix on a terminal).

    The message is never parsed as rich markup: it holds paths, config sections and DICOM tags, where
    ``[train_seg]`` would vanish and ``[/x]`` would crash the printer.
    """
    from rich.console import Console
    from rich.text import Text

    line = re.sub(r"\s*[\r\n]+\s*", " ", message.strip())  # one line, whatever the message holds
    Console(stderr=True, soft_wrap=True).print(Text.assemble(("error:", "bold red"), " ", line), highlight=False)


def esc(value: object) -> str:
    """``str(value)`` with rich markup escaped, for user data (paths, case ids, tags) inside markup."""
    from rich.markup import escape

    return escape(str(value))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"styleseg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More log output."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    from styleseg.runs import setup_logging

    setup_logging(logging.DEBUG if verbose else logging.INFO)


def _register_all() -> None:
    from styleseg.cli import eval as eval_cli
    from styleseg.cli import io as io_cli
    from styleseg.cli import pipeline as pipeline_cli
    from styleseg.cli import seg as seg_cli
    from styleseg.cli import select as select_cli
    from styleseg.cli import sim as sim_cli
    from styleseg.cli import style as style_cli

    for mod in (io_cli, sim_cli, select_cli, style_cli, seg_cli, eval_cli, pipeline_cli):
        mod.register(app)


_register_all()
