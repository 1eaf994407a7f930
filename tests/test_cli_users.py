"""`caduceus users`: the web's users from the command line, run as the real command against a
database (SQLite and PostgreSQL), with the web's login as the judge of what each change did."""

from __future__ import annotations

import json
import os
import pty
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from caduceus.core.db.models import API_TOKENS, EVENTS, USERS, WEB_SESSIONS
from tests.support.processes import Caduceus, free_port
from tests.support.web import web_client

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a new and longer passphrase"
OS_USER = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def home(tmp_path: Path, database_url: str) -> Caduceus:
    """An install with no service running: the command line alone, on a fresh database."""
    instance = Caduceus(tmp_path / "home", database_url, free_port())
    instance.home.mkdir(parents=True)
    return instance


def user_row(engine: Engine, name: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(USERS).where(USERS.c.username == name)).one()


def web(instance: Caduceus, engine: Engine) -> TestClient:
    return web_client(instance.home, instance.database_url, engine)


def login(instance: Caduceus, engine: Engine, name: str, password: str) -> int:
    return (
        web(instance, engine)
        .post("/api/login", json={"username": name, "password": password})
        .status_code
    )


def session_and_token(instance: Caduceus, engine: Engine, name: str) -> tuple[TestClient, str]:
    """A logged-in web client of this user, and an API token the user made with it."""
    client = web(instance, engine)
    assert client.post("/api/login", json={"username": name, "password": PASSWORD}).is_success
    csrf = {"X-CSRF-Token": client.get("/api/me").json()["csrf_token"]}
    token = client.post("/api/tokens", json={"name": "script"}, headers=csrf).json()["token"]
    return client, token


def add(instance: Caduceus, name: str, role: str, *extra: str) -> None:
    instance.cli("users", "add", name, "--role", role, "--password-stdin", *extra, input=PASSWORD)


def test_add_list_and_log_in(home: Caduceus) -> None:
    add(home, "ada", "admin", "--no-must-change")
    add(home, "nora", "operator")
    engine = home.engine()
    ada = user_row(engine, "ada")
    assert ada.role == "admin" and not ada.disabled and not ada.must_change_password
    assert ada.password_hash.startswith("$argon2id$"), "the web's hashing"
    assert user_row(engine, "nora").must_change_password, "must change by default, as on the web"

    # The web takes the password set on the command line.
    assert login(home, engine, "ada", PASSWORD) == 200
    assert login(home, engine, "ada", "not the password") == 401

    listed = home.cli("users", "list").stdout
    assert "ada" in listed and "admin" in listed and "nora" in listed and "operator" in listed
    assert "must change password" in listed
    assert "argon2" not in listed
    as_json = json.loads(home.cli("users", "list", "--json").stdout)
    assert [u["username"] for u in as_json] == ["ada", "nora"]
    assert all("password_hash" not in u for u in as_json)

    with engine.connect() as conn:
        event = conn.execute(
            select(EVENTS).where(EVENTS.c.kind == "user.created").order_by(EVENTS.c.id)
        ).first()
    assert event is not None
    assert event.message == f"user ada (admin) created by {OS_USER} (command line)"
    assert event.details["by"] == f"{OS_USER} (command line)"

    # A name that is taken, a short password, a role that does not exist: refused, in a line.
    taken = home.cli("users", "add", "ada", "--password-stdin", input=PASSWORD, check=False)
    assert taken.returncode == 1 and "the user name 'ada' is taken" in taken.stderr
    short = home.cli("users", "add", "bob", "--password-stdin", input="short", check=False)
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    role = home.cli(
        "users", "add", "bob", "--role", "root", "--password-stdin", input=PASSWORD, check=False
    )
    assert role.returncode == 1 and "role must be one of viewer, operator, admin" in role.stderr
    assert "Traceback" not in taken.stderr + short.stderr + role.stderr
    assert [u["username"] for u in json.loads(home.cli("users", "list", "--json").stdout)] == [
        "ada",
        "nora",
    ]


def test_a_password_is_never_an_argument(home: Caduceus) -> None:
    wrong = home.cli("users", "add", "ada", "--password", PASSWORD, check=False)
    assert wrong.returncode == 2 and "No such option" in wrong.stderr
    # Without a terminal to ask on, and without --password-stdin, nothing is guessed.
    no_tty = home.cli("users", "add", "ada", input="", check=False)
    assert no_tty.returncode == 1
    assert "no terminal to ask for the password on; use --password-stdin" in no_tty.stderr
    assert home.cli("users", "list", "--json").stdout.strip() == "[]"


def _on_a_terminal(instance: Caduceus, args: list[str], typed: list[str]) -> tuple[int, str]:
    """Run the command with a terminal as its input, type each line after its prompt, and
    return the exit code and what it wrote to stderr (the prompts, never the password)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "caduceus", *args],
        env=instance.env,
        stdin=follower,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no controlling terminal: getpass uses stdin, the pty
    )
    os.close(follower)
    assert process.stderr is not None
    seen, looked = b"", 0
    try:
        for line, prompt in zip(typed, (b"New password: ", b"Repeat it: "), strict=False):
            # Typed only once the prompt shows: turning echo off flushes earlier input.
            while prompt not in seen[looked:]:
                chunk = os.read(process.stderr.fileno(), 256)
                assert chunk, f"no prompt {prompt!r}; got {seen!r}"
                seen += chunk
            looked = seen.index(prompt, looked) + len(prompt)
            os.write(leader, line.encode() + b"\n")
        seen += process.stderr.read()
        code = process.wait(timeout=60)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, seen.decode()


def test_reset_password_on_a_terminal_ends_sessions_and_tokens(home: Caduceus) -> None:
    add(home, "ada", "admin", "--no-must-change")
    add(home, "carl", "operator", "--no-must-change")
    engine = home.engine()
    client, token = session_and_token(home, engine, "carl")
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/me", headers=bearer).status_code == 200

    # Two different passwords: refused, nothing changed.
    code, said = _on_a_terminal(
        home, ["users", "reset-password", "carl"], [NEW_PASSWORD, NEW_PASSWORD + "x"]
    )
    assert code == 1 and "the two passwords differ; nothing was changed" in said
    assert NEW_PASSWORD not in said, "the typed password is not echoed"
    assert client.get("/api/me").status_code == 200, "the session still stands"

    code, said = _on_a_terminal(
        home, ["users", "reset-password", "carl"], [NEW_PASSWORD, NEW_PASSWORD]
    )
    assert code == 0, said
    assert NEW_PASSWORD not in said
    carl = user_row(engine, "carl")
    assert carl.must_change_password, "a reset password must be changed at the next login"
    assert client.get("/api/me").status_code == 401, "the session ended"
    assert client.get("/api/me", headers=bearer).status_code == 401, "the token is revoked"
    with engine.connect() as conn:
        assert conn.execute(select(API_TOKENS.c.revoked)).scalars().all() == [True]
        assert not conn.execute(select(WEB_SESSIONS).where(WEB_SESSIONS.c.user_id == carl.id)).all()
        event = conn.execute(
            select(EVENTS).where(EVENTS.c.kind == "user.changed").order_by(EVENTS.c.id.desc())
        ).first()
    assert event is not None
    assert event.message == (
        f"user carl changed by {OS_USER} (command line): new password set; 1 API token(s) revoked"
    )
    assert NEW_PASSWORD not in json.dumps(event.details)
    assert login(home, engine, "carl", PASSWORD) == 401
    answer = web(home, engine).post(
        "/api/login", json={"username": "carl", "password": NEW_PASSWORD}
    )
    assert answer.status_code == 200 and answer.json()["must_change_password"] is True

    # A user that does not exist is told before any password is asked for.
    missing = home.cli("users", "reset-password", "nobody", input="", check=False)
    assert missing.returncode == 1 and "there is no user named 'nobody'" in missing.stderr


def test_the_last_admin_is_kept(home: Caduceus) -> None:
    add(home, "ada", "admin", "--no-must-change")
    add(home, "vic", "viewer", "--no-must-change")
    engine = home.engine()
    for args in (("set-role", "ada", "operator"), ("disable", "ada")):
        refused = home.cli("users", *args, check=False)
        assert refused.returncode == 1, refused
        assert "refused: this would leave no enabled admin" in refused.stderr
        assert "Traceback" not in refused.stderr
    ada = user_row(engine, "ada")
    assert ada.role == "admin" and not ada.disabled
    assert login(home, engine, "ada", PASSWORD) == 200

    # With a second admin, the first may go; the second is then the last one.
    home.cli("users", "set-role", "vic", "admin")
    assert user_row(engine, "vic").role == "admin"
    home.cli("users", "disable", "ada")
    assert user_row(engine, "ada").disabled
    assert login(home, engine, "ada", PASSWORD) == 401, "a disabled user cannot log in"
    refused = home.cli("users", "set-role", "vic", "viewer", check=False)
    assert refused.returncode == 1 and "no enabled admin" in refused.stderr
    home.cli("users", "enable", "ada")
    assert login(home, engine, "ada", PASSWORD) == 200
    home.cli("users", "set-role", "vic", "viewer")
    assert user_row(engine, "vic").role == "viewer"

    with engine.connect() as conn:
        messages = (
            conn.execute(
                select(EVENTS.c.message)
                .where(EVENTS.c.kind == "user.changed")
                .order_by(EVENTS.c.id)
            )
            .scalars()
            .all()
        )
    by = f"{OS_USER} (command line)"
    assert messages == [
        f"user vic changed by {by}: role admin",
        f"user ada changed by {by}: disabled",
        f"user ada changed by {by}: enabled",
        f"user vic changed by {by}: role viewer",
    ], "refusals change nothing and record nothing"


def test_disable_ends_sessions_and_revokes_tokens(home: Caduceus) -> None:
    add(home, "ada", "admin", "--no-must-change")
    add(home, "otto", "operator", "--no-must-change")
    engine = home.engine()
    client, token = session_and_token(home, engine, "otto")

    said = home.cli("users", "disable", "otto").stdout
    assert "otto is disabled; their sessions ended; 1 API token(s) revoked" in said
    assert client.get("/api/me").status_code == 401
    # Enabled again, the old token stays revoked: a new one must be made.
    home.cli("users", "enable", "otto")
    assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert login(home, engine, "otto", PASSWORD) == 200
