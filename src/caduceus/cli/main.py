"""The `caduceus` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from caduceus.cli.settings import load_settings
from caduceus.core.settings import Settings

# Locals in a traceback could hold a database password: never print them.
app = typer.Typer(
    help="caduceus: a DICOM orchestrator.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()


def _add_subcommands() -> None:
    from caduceus.cli import config, health, secrets, targets, tasks, users

    app.add_typer(config.app, name="config")
    app.add_typer(secrets.app, name="secrets")
    app.add_typer(targets.app, name="targets")
    app.add_typer(users.app, name="users")
    app.add_typer(tasks.task_actions, name="tasks")
    app.add_typer(tasks.queue_actions, name="queue")
    rules = typer.Typer(help="Routing rules.", no_args_is_help=True)
    rules.command("test")(tasks.rules_test_command)
    app.add_typer(rules, name="rules")
    app.command("health")(health.health)


_add_subcommands()


def main() -> None:
    """The command line, with a missing or wrong secrets key told in a line, not a traceback."""
    from caduceus.core.secret_keys import SecretKeyError

    try:
        app()
    except SecretKeyError as exc:
        import logging

        logging.getLogger("caduceus").error("%s", exc)
        Console(stderr=True, soft_wrap=True).print(f"error: {exc}", markup=False, highlight=False)
        raise SystemExit(2) from None


def _run_service(name: str, serve: Callable[[Settings], None], *, heartbeat: bool = True) -> None:
    """Logging (stderr and the service's log file), the schema, then the service, beating."""
    from caduceus.core.database import open_database
    from caduceus.core.heartbeat import beating
    from caduceus.core.logs import setup_logging

    settings = load_settings()
    setup_logging(name, home=settings.home, file_mode=settings.file_mode)
    engine = open_database(settings, migrate=True, pool_size=1)
    try:
        if not heartbeat:
            engine.dispose()
            serve(settings)
            return
        with beating(engine, name):
            serve(settings)
    finally:
        engine.dispose()


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option(help="Import this configuration file before starting.")
    ] = None,
) -> None:
    """Start every service (receiver, ...) and keep them running until Ctrl-C."""
    from caduceus.core.database import open_database
    from caduceus.core.logs import setup_logging
    from caduceus.core.service_names import SERVICES
    from caduceus.core.storage import DataRoot
    from caduceus.supervisor.supervisor import Supervisor

    settings = load_settings()
    DataRoot(settings.home).create(settings.folder_mode)
    setup_logging("supervisor", home=settings.home, file_mode=settings.file_mode)
    engine = open_database(settings, migrate=True, pool_size=1)
    if config is not None:
        from caduceus.cli.config import import_file

        import_file(config, "caduceus run --config")
    try:
        code = Supervisor(
            SERVICES, engine=engine, start_grace=settings.supervisor_start_grace_seconds
        ).run()
    finally:
        engine.dispose()
    raise typer.Exit(code)


@app.command()
def receiver() -> None:
    """Run the DICOM receiver (C-STORE and C-ECHO SCP) alone."""
    from caduceus.receiver.server import serve

    # The receiver forks its workers: it runs its heartbeat itself, after forking.
    _run_service("receiver", serve, heartbeat=False)


@app.command()
def router() -> None:
    """Run the router alone: completes series, studies and patients and makes their tasks."""
    from caduceus.router.service import serve

    _run_service("router", serve)


@app.command()
def dispatcher() -> None:
    """Run the dispatcher alone: sends tasks to their targets, with retries."""
    from caduceus.dispatcher.service import serve

    _run_service("dispatcher", serve)


@app.command()
def processor() -> None:
    """Run the processor alone: runs the modules of tasks that process images."""
    from caduceus.processor.service import serve

    _run_service("processor", serve)


@app.command()
def web() -> None:
    """Run the bookkeeper API and web interface alone (port CADUCEUS_WEB_PORT)."""
    from caduceus.web.service import serve

    _run_service("web", serve)


@app.command()
def cleaner() -> None:
    """Run the cleaner alone: removes finished work after its retention, or when the disk fills."""
    from caduceus.cleaner.service import serve

    _run_service("cleaner", serve)


@app.command()
def notifier() -> None:
    """Run the notifier alone: webhooks and mails on reception, completion and errors."""
    from caduceus.notifier.service import serve

    _run_service("notifier", serve)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from caduceus.core.database import open_database

    open_database(load_settings(), migrate=True).dispose()
    console.print("database is up to date")


@app.command()
def settings() -> None:
    """Show the effective settings (secrets masked)."""
    print(json.dumps(load_settings().public_dict(), indent=2))


@app.command()
def selftest(
    timeout: Annotated[
        float, typer.Option(min=5, max=600, help="Seconds each waiting stage may take.")
    ] = 60.0,
) -> None:
    """Send a generated series through the running services to a temporary folder target and
    check each stage, as the web interface's self-test does. Exits 1 when a stage fails."""
    from caduceus.core.database import open_database
    from caduceus.core.db.engine import writer
    from caduceus.selftest.runner import run_selftest

    config = load_settings()
    engine = open_database(config, migrate=True)
    try:
        with console.status("self-test running"):
            result = run_selftest(
                config,
                engine.execution_options(caduceus_write=False),
                writer(engine),
                "command line",
                timeout,
            )
    finally:
        engine.dispose()
    table = Table(title=f"self-test {result.id}: {result.state}")
    for column in ("stage", "state", "seconds", "message"):
        table.add_column(column, overflow="fold")
    for stage in result.stages:
        seconds = "" if stage.seconds is None else f"{stage.seconds:.1f}"
        table.add_row(stage.title, stage.state, seconds, stage.message)
    console.print(table)
    if result.cleanup:
        console.print(f"clean-up: {result.cleanup}")
    if result.state != "passed":
        raise typer.Exit(1)


@app.command()
def series(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    limit: Annotated[int, typer.Option(help="How many series, newest first.")] = 100,
) -> None:
    """List the series that arrived, newest first."""
    from caduceus.core.database import open_database
    from caduceus.core.queries import list_series

    engine = open_database(load_settings(), migrate=True)
    rows = list_series(engine, limit)
    engine.dispose()
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{len(rows)} series, newest first (UIDs with --json)")
    for column in ("patient", "study", "series", "mod", "images", "sender", "last arrival"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            f"{row['patient_name']}\n{row['patient_id']}",
            f"{row['study_date']} {row['study_description']}".strip(),
            f"{row['series_number']} {row['series_description']}".strip(),
            row["modality"],
            str(row["instances"]),
            "\n".join(f"{s['ae_title']}@{s['host']}" for s in row["senders"]),
            str(row["last_received_at"])[:19].replace("T", " "),
        )
    console.print(table)


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders.", exists=True)],
    host: Annotated[str, typer.Option(help="Receiver's host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Receiver's port.")] = 11112,
    called_aet: Annotated[str, typer.Option(help="Receiver's AE title.")] = "CADUCEUS",
    calling_aet: Annotated[str, typer.Option(help="Our AE title.")] = "CADUCEUS_SCU",
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the receiver before giving up.", min=1)
    ] = 120,
) -> None:
    """Send files or folders with C-STORE."""
    from caduceus.cli.send import send as do_send

    try:
        report = do_send(
            paths, host, port, called_aet, calling_aet, sys.stderr.isatty(), timeout=timeout
        )
    except (ConnectionError, ValueError, OSError) as exc:
        console.print(f"[red]send failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    for line in report.skipped:
        console.print(f"[yellow]skipped (not DICOM):[/yellow] {line}")
    for path, reason in report.failed.items():
        console.print(f"[red]failed:[/red] {path}: {reason}")
    console.print(f"sent {report.sent}, failed {len(report.failed)}, skipped {len(report.skipped)}")
    if report.failed:
        raise typer.Exit(1)
