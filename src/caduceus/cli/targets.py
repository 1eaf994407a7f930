"""`caduceus targets ...`: list and check the configured targets."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from caduceus.cli.settings import load_settings
from caduceus.core.config.describe import where_of
from caduceus.core.config.models import Config

app = typer.Typer(help="Targets: where results are sent.", no_args_is_help=True)
console = Console()


def _config() -> Config:
    from caduceus.core.config import store
    from caduceus.core.database import open_database

    engine = open_database(load_settings(), migrate=True)
    try:
        return store.current_or_default(engine)
    finally:
        engine.dispose()


@app.command("list")
def list_() -> None:
    """List the configured targets (no secrets are shown)."""
    for name, target in _config().targets.items():
        console.print(f"{name}  {target.type}  {where_of(target)}", highlight=False, markup=False)


@app.command()
def test(name: Annotated[str, typer.Argument(help="Target name.")]) -> None:
    """Check that a target answers (C-ECHO, a writable folder, ...) and say what failed."""
    from caduceus.dispatcher.interface import TargetError, check_target

    config = _config()
    if name not in config.targets:
        console.print(f"[red]no target named {name!r}[/red]")
        raise typer.Exit(2)
    try:
        message = check_target(config.targets[name])
    except TargetError as exc:
        console.print(f"[red]{name}: failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"{name}: {message}", highlight=False)
