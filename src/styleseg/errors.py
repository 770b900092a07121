"""Errors that reach the user: each names the file (or setting) and says how to fix it."""

from __future__ import annotations

from pathlib import Path


class StylesegError(Exception):
    """Base class: the CLI prints these without a traceback and exits with status 2."""


class InputError(StylesegError):
    """Bad input data: a missing, corrupt or inconsistent file."""

    def __init__(self, path: str | Path | None, problem: str, fix: str | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path is not None else ""
        msg = f"{where}{problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class ConfigError(StylesegError):
    """A configuration value or key that is wrong (typo, out of range)."""


class CheckpointMismatch(ConfigError):
    """A checkpoint to resume was written with another configuration or other inputs."""
