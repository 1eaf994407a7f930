"""`caduceus users ...`: the web's users from the command line, for an administrator who is
locked out of the web interface or who scripts an install.

The same store, hashes, roles and rules as the web's Users page (caduceus.core.accounts):
the last enabled admin is never demoted or disabled, and a disabling or a new password ends
the user's sessions and revokes their API tokens. A password is never an argument (every
user of the machine sees arguments in `ps`): it is asked for twice without echo, or read
from standard input with --password-stdin. Every change is an event whose author is the
operating-system user who ran the command.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from caduceus.cli.settings import load_settings
from caduceus.core import accounts

app = typer.Typer(
    help="Users of the web interface and the API (as on its Users page).", no_args_is_help=True
)
console = Console()
err = Console(stderr=True, soft_wrap=True)

Role = Annotated[str, typer.Argument(help="viewer, operator or admin.", show_default=False)]
Name = Annotated[str, typer.Argument(help="The user name.", show_default=False)]
PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of standard input instead of asking.",
    ),
]
MustChange = Annotated[
    bool,
    typer.Option(
        "--must-change/--no-must-change",
        help="Whether the user must choose a new password at the next login.",
    ),
]


def author() -> str:
    """Who ran the command, for the event: the operating-system user (a container's user may
    have no name), marked as the command line."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return f"{name} (command line)"


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False)  # user names are not markup


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def read_password(from_stdin: bool) -> str:
    """The new password: the first line of standard input, or typed twice without echo."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise _fail("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise _fail("no terminal to ask for the password on; use --password-stdin")
    try:
        first = getpass.getpass("New password: ", stream=sys.stderr)
        second = getpass.getpass("Repeat it: ", stream=sys.stderr)
    except (EOFError, KeyboardInterrupt):
        raise _fail("no password given") from None
    if first != second:
        raise _fail("the two passwords differ; nothing was changed")
    return first


@contextmanager
def _database() -> Iterator[Engine]:
    from caduceus.core.database import open_database
    from caduceus.core.db.engine import writer

    engine = open_database(load_settings(), migrate=True, pool_size=1)
    try:
        yield writer(engine)
    finally:
        engine.dispose()


@contextmanager
def _refusals() -> Iterator[None]:
    """An AccountError becomes its message on stderr and exit code 1, not a traceback."""
    try:
        yield
    except accounts.LastAdmin as exc:
        raise _fail(f"refused: {exc}; make another user admin (or enable one) first") from None
    except accounts.AccountError as exc:
        raise _fail(str(exc)) from None


@app.command()
def add(
    name: Name,
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
    password_stdin: PasswordStdin = False,
    must_change: MustChange = True,
) -> None:
    """Add a user. The password is asked for twice (or read with --password-stdin)."""
    with _refusals():
        accounts.check_username(name)
        accounts.check_role(role)
        with _database() as engine:  # a taken name is told before the password is asked
            if any(user["username"] == name for user in accounts.list_users(engine)):
                raise accounts.NameTaken(f"the user name {name!r} is taken")
        password = read_password(password_stdin)
        accounts.check_new_password(password)
        with _database() as engine:
            user_id = accounts.create_user(
                engine, name, password, role, must_change=must_change, author=author()
            )
    _say(f"added user {name} ({role}), id {user_id}")


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the users with their roles and states (never a password hash)."""
    with _database() as engine:
        users = accounts.list_users(engine)
    if as_json:
        shown = [{**user, "created_at": user["created_at"].isoformat()} for user in users]
        print(json.dumps(shown, indent=2))
        return
    table = Table(title=f"{len(users)} user" + ("" if len(users) == 1 else "s"))
    for column in ("id", "user", "role", "state", "created (UTC)"):
        table.add_column(column, overflow="fold")
    for user in users:
        state = "disabled" if user["disabled"] else "enabled"
        if user["must_change_password"]:
            state += ", must change password"
        created = user["created_at"].strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(user["id"]), user["username"], user["role"], state, created)
    console.print(table)


def _change(
    name: str,
    *,
    role: str | None = None,
    disabled: bool | None = None,
    password: str | None = None,
    must_change: bool = True,
) -> accounts.Changed:
    with _refusals(), _database() as engine:
        return accounts.change_user(
            engine,
            accounts.user_id_of(engine, name),
            author(),
            role=role,
            disabled=disabled,
            password=password,
            must_change=must_change,
        )


def _revoked(changed: accounts.Changed) -> str:
    count = changed.tokens_revoked
    return f"; {count} API token(s) revoked" if count else ""


@app.command("set-role")
def set_role(name: Name, role: Role) -> None:
    """Give a user another role; their sessions end (the last enabled admin stays admin)."""
    with _refusals():
        accounts.check_role(role)
    changed = _change(name, role=role)
    _say(f"{name} is now {role}; their sessions ended{_revoked(changed)}")


@app.command()
def disable(name: Name) -> None:
    """Disable a user: no login, sessions ended, API tokens revoked (not the last admin)."""
    changed = _change(name, disabled=True)
    _say(f"{name} is disabled; their sessions ended{_revoked(changed)}")


@app.command()
def enable(name: Name) -> None:
    """Enable a disabled user again (their revoked API tokens stay revoked)."""
    _change(name, disabled=False)
    _say(f"{name} is enabled")


@app.command("reset-password")
def reset_password(
    name: Name, password_stdin: PasswordStdin = False, must_change: MustChange = True
) -> None:
    """Set a new password (asked for twice, or read with --password-stdin); sessions end and
    API tokens are revoked."""
    with _refusals(), _database() as engine:
        accounts.user_id_of(engine, name)  # a wrong name is told before the password is asked
    with _refusals():
        password = read_password(password_stdin)
        accounts.check_new_password(password)
    changed = _change(name, password=password, must_change=must_change)
    then = "; it must be changed at the next login" if must_change else ""
    _say(f"new password set for {name}{then}; their sessions ended{_revoked(changed)}")
