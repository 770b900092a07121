"""CLI commands of the style area (registered on the main app by styleseg.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to app."""
