"""CLI commands for style-slice selection (registered on the main app by styleseg.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
