"""`caduceus config ...`: import, export, validate, history and restore of the configuration."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy import Engine

from caduceus.cli.settings import load_settings
from caduceus.core.config import files, store

app = typer.Typer(
    help="The configuration: rules, targets, modules, settings.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True, soft_wrap=True)


def _engine() -> Engine:
    from caduceus.core.database import open_database

    return open_database(load_settings(), migrate=True)


def _load(path: Path) -> files.Loaded:
    try:
        loaded = files.load(path, allow_root_modules=load_settings().processor_allow_root)
    except (files.ConfigFileError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc
    for line in loaded.not_mapped:
        # Each line says itself what became of the field (not imported, or changed).
        err.print(f"[yellow]mercure:[/yellow] {line}", highlight=False)
    return loaded


def import_file(path: Path, author: str) -> int:
    """Import a file as the newest configuration version; used by `caduceus run --config`."""
    loaded = _load(path)
    engine = _engine()
    try:
        version, changed = store.save(
            engine, loaded.config, author, f"imported {path.name} ({loaded.source_format} format)"
        )
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    console.print(
        f"configuration version {version}" + ("" if changed else " (unchanged)"), highlight=False
    )
    return version


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="caduceus YAML/JSON file, or mercure.json.")],
    author: Annotated[str, typer.Option(help="Recorded with the version.")] = "",
) -> None:
    """Import a configuration file as a new version."""
    import_file(path, author or getpass.getuser())


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="File to check.")]) -> None:
    """Check a configuration file without importing it."""
    loaded = _load(path)
    config = loaded.config
    console.print(
        f"valid ({loaded.source_format} format): {len(config.rules)} rules, "
        f"{len(config.targets)} targets, {len(config.modules)} modules",
        highlight=False,
    )


@app.command()
def export(
    fmt: Annotated[str, typer.Option("--format", help="yaml or json")] = "yaml",
    version: Annotated[int | None, typer.Option(help="Version to export; default newest.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (mode 600).")
    ] = None,
    with_secrets: Annotated[
        bool, typer.Option("--with-secrets", help="Include passwords and keys; needs --output.")
    ] = False,
) -> None:
    """Print the configuration (the newest version, or --version N). Secrets are masked.

    A masked export can be edited and imported again: masked secrets keep their stored value.
    """
    if with_secrets and output is None:
        err.print("[red]error:[/red] --with-secrets writes only to a file (--output)")
        raise typer.Exit(2)
    engine = _engine()
    try:
        config = store.get(engine, version) if version else store.current_or_default(engine)
    except LookupError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    text = files.dump(config, fmt, with_secrets=with_secrets)
    if output is None:
        print(text, end="")
        return
    # A new file, private from its creation (the export may hold secrets), then renamed over
    # the name: an existing file's looser mode or a planted symbolic link is never reused.
    temporary = output.with_name(f".{output.name}.{os.getpid()}.part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    console.print(f"written to {output}", highlight=False)


@app.command()
def history(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the configuration versions, newest first."""
    engine = _engine()
    rows = store.history(engine)
    engine.dispose()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        console.print(
            f"{row['version']:>5}  {row['created_at'][:19]}  {row['author']:<16} {row['comment']}",
            highlight=False,
        )


@app.command()
def restore(
    version: Annotated[int, typer.Argument(help="Version to bring back.")],
    author: Annotated[str, typer.Option()] = "",
) -> None:
    """Make an old version the newest again (as a new version)."""
    engine = _engine()
    try:
        new = store.restore(engine, version, author or getpass.getuser())
    except LookupError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    console.print(f"version {version} restored as version {new}")
