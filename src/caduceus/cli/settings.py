"""The settings every `caduceus` command starts from, with invalid ones told in a line.

Its own module so the subcommands (config, health, targets, tasks, ...) need not import the
command line's main module, which imports them.
"""

from __future__ import annotations

import typer
from rich.console import Console

from caduceus.core.settings import Settings


def load_settings() -> Settings:
    """The settings from the environment (and its file); exits 2 when they are invalid."""
    try:
        return Settings()
    except Exception as exc:
        Console().print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc
