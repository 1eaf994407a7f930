"""`caduceus tasks` and `caduceus rules test`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, select

from caduceus.cli.settings import load_settings
from caduceus.core.db.models import EVENTS, TASKS

console = Console()


def list_tasks(engine: Engine, limit: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        tasks = [
            dict(r._mapping)
            for r in conn.execute(select(TASKS).order_by(TASKS.c.created_at.desc()).limit(limit))
        ]
        ids = [t["id"] for t in tasks]
        events: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        if ids:
            for e in conn.execute(
                select(EVENTS.c.task_id, EVENTS.c.at, EVENTS.c.kind, EVENTS.c.message)
                .where(EVENTS.c.task_id.in_(ids))
                .order_by(EVENTS.c.id)
            ):
                events[e.task_id].append(
                    {"at": e.at.isoformat(), "kind": e.kind, "message": e.message}
                )
    for task in tasks:
        task["events"] = events[task["id"]]
        task.pop("info", None)
        for key, value in list(task.items()):
            if isinstance(value, datetime):
                task[key] = value.isoformat()
    return tasks


def tasks_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 100,
) -> None:
    """List tasks with their state, rule, targets and events."""
    if ctx.invoked_subcommand is not None:
        return
    from caduceus.core.database import open_database

    engine = open_database(load_settings(), migrate=True)
    tasks = list_tasks(engine, limit)
    engine.dispose()
    if as_json:
        print(json.dumps(tasks, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{len(tasks)} tasks, newest first")
    for column in ("task", "state", "rule", "action", "level", "targets", "modules", "events"):
        table.add_column(column, overflow="fold")
    for task in tasks:
        table.add_row(
            task["id"][:8],
            task["state"],
            task["rule"],
            task["action"],
            task["level"],
            ", ".join(task["targets"]),
            ", ".join(task["modules"]),
            "\n".join(f"{e['kind']}: {e['message']}" for e in task["events"]),
        )
    console.print(table)


def rules_test_command(
    expression: Annotated[str, typer.Argument(help="A rule, e.g. \"@Modality@ == 'CT'\".")],
    source: Annotated[str, typer.Argument(help="A DICOM file, or a SeriesInstanceUID received.")],
    text: Annotated[
        bool,
        typer.Option(
            "--tags-as-text",
            help="Give the rule every tag as text, as mercure does (rules with tag_values: text).",
        ),
    ] = False,
) -> None:
    """Evaluate a rule on a file's or a received series' tags; show the values it used.

    Exit status: 0 true, 3 false, 2 invalid rule, 4 stopped by the rules' budget, 1 no tags."""
    from caduceus.core.dicom.series_tags import UnreadableSeries, read_tags
    from caduceus.core.rules import Budget, EvaluationError, RuleError, parse_rule

    try:
        rule = parse_rule(expression)
    except RuleError as exc:
        console.print(f"[red]invalid rule:[/red] {exc}", highlight=False)
        console.print("  " + expression, highlight=False, markup=False)
        if exc.position is not None:
            console.print("  " + " " * exc.position + "^", highlight=False, markup=False)
        raise typer.Exit(2) from exc
    path = Path(source)
    try:
        tags = read_tags(path) if path.is_file() else _series_tags(source)
    except UnreadableSeries as exc:
        console.print(f"[red]cannot read tags:[/red] {exc}")
        raise typer.Exit(1) from exc
    if text:
        from caduceus.core.rules.text_values import as_text

        tags = as_text(tags)
    try:
        result, used = rule.explain(tags, Budget.of(load_settings()))
    except EvaluationError as exc:
        console.print(f"[red]the rule could not be evaluated:[/red] {exc}", highlight=False)
        raise typer.Exit(4) from exc
    for keyword, value in sorted(used.items()):
        console.print(f"  {keyword} = {value!r}", highlight=False, markup=False)
    console.print(f"result: {result}", highlight=False)
    raise typer.Exit(0 if result else 3)


def _series_tags(series_uid: str) -> dict[str, Any]:
    """The tags of a received series, as the router reads them (its newest stored file)."""
    from caduceus.core.database import open_database
    from caduceus.core.dicom.series_tags import series_tags
    from caduceus.core.storage import DataRoot

    settings = load_settings()
    engine = open_database(settings, migrate=True)
    try:
        tags = series_tags(engine, DataRoot(settings.home), series_uid=series_uid)
    finally:
        engine.dispose()
    if tags is None:
        console.print(f"[red]no file and no received series named {series_uid!r}[/red]")
        raise typer.Exit(1)
    return tags


task_actions = typer.Typer(
    help="Tasks: list them (no subcommand), or act on one.", invoke_without_command=True
)
queue_actions = typer.Typer(help="Suspend or resume dispatching.", no_args_is_help=True)


def _engine() -> Engine:
    from caduceus.core.database import open_database

    return open_database(load_settings(), migrate=True)


@task_actions.command("restart")
def restart_command(
    task_id: Annotated[str, typer.Argument(help="Task id (or its start).")],
) -> None:
    """Restart a failed task: processing resumes at the failed step; sending goes only to the
    targets that failed."""
    import getpass

    from caduceus.dispatcher.interface import restart

    engine = _engine()
    with engine.connect() as conn:
        matches = (
            conn.execute(select(TASKS.c.id).where(TASKS.c.id.startswith(task_id))).scalars().all()
        )
    if len(matches) != 1:
        console.print(f"[red]{len(matches)} tasks match {task_id!r}[/red]")
        raise typer.Exit(1)
    try:
        count = restart(engine, matches[0], getpass.getuser())
    except LookupError as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    again = f": {count} target(s) will be tried again" if count else ""
    console.print(f"task {matches[0]} restarted{again}")


def _set_suspended(name: str, value: bool) -> None:
    import getpass

    from caduceus.core.work_queue import set_suspended

    engine = _engine()
    set_suspended(engine, name, value, getpass.getuser())
    engine.dispose()
    console.print(f"{name}: {'suspended' if value else 'resumed'}")


def _queue_name(target: str, processing: bool) -> str:
    if processing:
        if target:
            raise typer.BadParameter("--processing takes no target name")
        return "process"
    return f"dispatch:{target}" if target else "dispatch"


@queue_actions.command("suspend")
def suspend(
    target: Annotated[str, typer.Argument(help="A target name; none for all.")] = "",
    processing: Annotated[
        bool, typer.Option("--processing", help="Suspend processing instead.")
    ] = False,
) -> None:
    """Stop dispatching (all, or to one target), or processing, until resumed."""
    _set_suspended(_queue_name(target, processing), True)


@queue_actions.command("resume")
def resume(
    target: Annotated[str, typer.Argument(help="A target name; none for all.")] = "",
    processing: Annotated[
        bool, typer.Option("--processing", help="Resume processing instead.")
    ] = False,
) -> None:
    """Resume dispatching or processing."""
    _set_suspended(_queue_name(target, processing), False)


task_actions.callback()(tasks_command)
