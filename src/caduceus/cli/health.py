"""`caduceus health`: is this host's caduceus running? For container and systemd health checks.

A service counts as healthy when the newest heartbeat its processes recorded from this host is
a running one and recent. The check reads the service_heartbeats table only: it costs one
query, needs no port of the service, and works the same for every service, the receiver and
the web as much as the router or the cleaner that listen on nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Annotated

import typer
from sqlalchemy import Engine

from caduceus.cli.settings import load_settings
from caduceus.core.heartbeat import ServiceState, service_states


def health_problems(
    states: Iterable[ServiceState],
    host: str,
    required: Sequence[str] = (),
) -> list[str]:
    """What is wrong on this host, one line each; empty when healthy.

    Without `required`, every service that ever registered from this host must be healthy and
    at least one must have: a container runs one service, or all of them under `caduceus run`,
    and its hostname is its own, so the rows tell which.
    """
    newest: dict[str, ServiceState] = {}
    for state in states:
        if state.host != host:
            continue
        # A process that died before a restart leaves its row behind for a while: the newest
        # beat says how the service is now.
        known = newest.get(state.service)
        if known is None or state.beat_at > known.beat_at:
            newest[state.service] = state
    problems = [f"{name}: no heartbeat from {host} yet" for name in required if name not in newest]
    if not newest and not required:
        problems.append(f"no caduceus service has registered from {host} yet")
    for name, state in sorted(newest.items()):
        if required and name not in required:
            continue
        # service_states already calls a running process whose beat is old silent.
        if state.state != "running":
            reason = state.detail or f"last beat {state.seconds_since_beat:.0f} s ago"
            problems.append(f"{name}: {state.state} ({reason})")
    return problems


def check(engine: Engine, host: str, required: Sequence[str] = ()) -> list[str]:
    # On the database's clock, which the beats are written with.
    return health_problems(service_states(engine), host, required)


def health(
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            "-s",
            help="A service that must be running here (repeat for several); default: every "
            "service that registered from this host.",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="The host whose services to check; default: this one.")
    ] = None,
) -> None:
    """Exit 0 when this host's services beat recently, 1 (with the reasons) when not."""
    from caduceus.core.database import open_database
    from caduceus.core.service_names import SERVICES

    unknown = sorted(set(service or []) - set(SERVICES))
    if unknown:
        raise typer.BadParameter(f"unknown service {', '.join(unknown)}; one of {SERVICES}")

    # No migration here: a health probe must never change the schema, nor wait on a migration.
    engine = open_database(load_settings(), pool_size=1)
    try:
        problems = check(engine, host or socket.gethostname(), service or [])
    except Exception as exc:
        # The first line says enough (no such table, connection refused); the rest is the SQL.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        typer.echo(f"unhealthy: cannot read the heartbeats: {reason}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    for line in problems:
        typer.echo(f"unhealthy: {line}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("healthy")
