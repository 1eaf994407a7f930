"""Who is asking: API tokens for tools, login sessions for the browser, and their roles.

Passwords are argon2id hashes. API tokens and session cookies are random and stored only as
SHA-256 digests, so a copy of the database opens nothing. A session remembers the user's
generation, which a password change, a demotion or a removal bumps: every older session is
void at once, without a list of sessions to hunt down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import Engine, and_, delete, insert, select, update

from caduceus.core.db.models import API_TOKENS, USERS, WEB_SESSIONS
from caduceus.core.events import record_event

log = logging.getLogger("caduceus.web")

ROLES = ("viewer", "operator", "admin")
SESSION_COOKIE = "caduceus_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = timedelta(hours=12)
TOKEN_TOUCH = timedelta(minutes=1)
INITIAL_PASSWORD_FILE = "initial-admin-password"  # noqa: S105 - a file name, not a password
TOKEN_PREFIX = "cdc_"  # noqa: S105 - a marker that makes leaked tokens easy to find
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def check_new_password(password: str) -> None:
    if len(password) < 10:
        raise ValueError("a password has at least 10 characters")


@dataclass(frozen=True)
class Principal:
    """The user behind a request, and how they proved it."""

    user_id: int
    username: str
    role: str
    via: str  # "token" or "session"
    must_change_password: bool = False
    session_id: str = ""
    csrf_token: str = ""

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


# -- users -----------------------------------------------------------------------------------


def create_user(
    engine: Engine, username: str, password: str, role: str, must_change: bool = False
) -> int:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    check_new_password(password)
    with engine.begin() as conn:
        user_id = conn.execute(
            insert(USERS)
            .values(
                username=username,
                password_hash=hash_password(password),
                role=role,
                must_change_password=must_change,
                disabled=False,
                created_at=datetime.now(UTC),
                generation=0,
            )
            .returning(USERS.c.id)
        ).scalar_one()
        record_event(conn, "user.created", f"user {username} ({role})")
    return int(user_id)


def ensure_initial_admin(engine: Engine, home: Path) -> Path | None:
    """With no user at all, create `admin` with a random password that must be changed at
    first login. The password goes into a file only its owner can read, never into a log."""
    with engine.connect() as conn:
        if conn.execute(select(USERS.c.id).limit(1)).first() is not None:
            return None
    password = secrets.token_urlsafe(12)
    path = home / INITIAL_PASSWORD_FILE
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left from before keeps its mode otherwise
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    try:
        create_user(engine, "admin", password, "admin", must_change=True)
    except Exception:  # another process made the first user at the same moment
        path.unlink(missing_ok=True)
        return None
    log.warning("created the user admin; its first password is in %s", path)
    return path


def change_password(engine: Engine, user_id: int, password: str) -> None:
    check_new_password(password)
    with engine.begin() as conn:
        conn.execute(
            update(USERS)
            .where(USERS.c.id == user_id)
            .values(
                password_hash=hash_password(password),
                must_change_password=False,
                generation=USERS.c.generation + 1,
            )
        )
        conn.execute(delete(WEB_SESSIONS).where(WEB_SESSIONS.c.user_id == user_id))
        record_event(conn, "user.password_changed", f"user {user_id} changed the password")


# -- sessions and tokens ---------------------------------------------------------------------


class LoginThrottle:
    """Failed logins: at most `limit` per address and user name, and `per_name` per user name
    from anywhere, within `window` seconds. Checked and counted under one lock, so a burst of
    parallel guesses gets no more tries than a sequence."""

    def __init__(self, limit: int = 5, per_name: int = 20, window: float = 300.0):
        self.limit = limit
        self.per_name = per_name
        self.window = window
        self.lock = threading.Lock()
        self.failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        recent = self.failures.get(key, deque())
        while recent and recent[0] < now - self.window:
            recent.popleft()
        if not recent:
            self.failures.pop(key, None)
        return recent

    def attempt(self, address: str, username: str) -> bool:
        """Whether a login may be tried now; a try counts as failed until it succeeds."""
        name = username.lower()
        now = time.monotonic()
        with self.lock:
            if len(self.failures) > 100_000:  # random names must not grow memory without end
                for key in list(self.failures):
                    self._recent(key, now)
            if (
                len(self._recent((address, name), now)) >= self.limit
                or len(self._recent(("*", name), now)) >= self.per_name
            ):
                return False
            for key in ((address, name), ("*", name)):
                self.failures.setdefault(key, deque()).append(now)
            return True

    def succeeded(self, address: str, username: str) -> None:
        name = username.lower()
        with self.lock:
            self.failures.pop((address, name), None)
            anywhere = self.failures.get(("*", name))
            if anywhere:
                anywhere.pop()  # this attempt was no failure


def login(engine: Engine, username: str, password: str, address: str) -> tuple[str, str] | None:
    """A new session (cookie value, CSRF token) for the right password, else None."""
    with engine.begin() as conn:
        user = conn.execute(select(USERS).where(USERS.c.username == username)).first()
        # The same argon2 work whether the user exists or not: the time of an answer must not
        # tell which user names exist.
        matches = password_matches(user.password_hash if user else _DUMMY_HASH, password)
        if user is None or user.disabled or not matches:
            record_event(
                conn,
                "login.failed",
                f"failed login for {username[:64]!r} from {address}",
                severity="warning",
            )
            return None
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        conn.execute(
            insert(WEB_SESSIONS).values(
                id=digest(cookie),
                user_id=user.id,
                generation=user.generation,
                created_at=now,
                expires_at=now + SESSION_LIFETIME,
                csrf_token=csrf,
            )
        )
        record_event(conn, "login.succeeded", f"{username} logged in from {address}")
    return cookie, csrf


def logout(engine: Engine, cookie: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(WEB_SESSIONS).where(WEB_SESSIONS.c.id == digest(cookie)))


def create_token(engine: Engine, user_id: int, name: str) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            insert(API_TOKENS).values(
                user_id=user_id,
                name=name,
                token_hash=digest(token),
                created_at=datetime.now(UTC),
                revoked=False,
            )
        )
        record_event(conn, "token.created", f"API token {name!r} for user {user_id}")
    return token


def _from_token(engine: Engine, writer: Engine, token: str) -> Principal | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(USERS, API_TOKENS.c.id.label("token_id"), API_TOKENS.c.last_used_at)
            .join(API_TOKENS, API_TOKENS.c.user_id == USERS.c.id)
            .where(
                and_(
                    API_TOKENS.c.token_hash == digest(token),
                    API_TOKENS.c.revoked.is_(False),
                    USERS.c.disabled.is_(False),
                )
            )
        ).first()
    if row is None:
        return None
    now = datetime.now(UTC)
    last = row.last_used_at
    if last is None or (last if last.tzinfo else last.replace(tzinfo=UTC)) < now - TOKEN_TOUCH:
        # Recorded at most once a minute: a scraper polling every few seconds must not turn
        # every read into a durable write.
        with writer.begin() as conn:
            conn.execute(
                update(API_TOKENS).where(API_TOKENS.c.id == row.token_id).values(last_used_at=now)
            )
    return Principal(row.id, row.username, row.role, "token")


def session_principal(engine: Engine, cookie: str) -> Principal | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(USERS, WEB_SESSIONS.c.id.label("sid"), WEB_SESSIONS.c.csrf_token)
            .join(WEB_SESSIONS, WEB_SESSIONS.c.user_id == USERS.c.id)
            .where(
                and_(
                    WEB_SESSIONS.c.id == digest(cookie),
                    WEB_SESSIONS.c.expires_at > datetime.now(UTC),
                    WEB_SESSIONS.c.generation == USERS.c.generation,
                    USERS.c.disabled.is_(False),
                )
            )
        ).first()
    if row is None:
        return None
    return Principal(
        row.id,
        row.username,
        row.role,
        "session",
        must_change_password=bool(row.must_change_password),
        session_id=row.sid,
        csrf_token=row.csrf_token,
    )


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Where a session that must change its password may still go.
PASSWORD_CHANGE_PATHS = frozenset(
    {"/api/me", "/api/me/password", "/api/logout", "/account/password"}
)


def authenticate(request: Request) -> Principal:
    """The FastAPI dependency behind every route but the login."""
    engine: Engine = request.app.state.engine
    header = request.headers.get("authorization", "")
    principal = None
    if header.lower().startswith("bearer "):
        principal = _from_token(engine, request.app.state.writer, header[7:].strip())
    elif cookie := request.cookies.get(SESSION_COOKIE):
        principal = session_principal(engine, cookie)
        if principal is not None and request.method in UNSAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not secrets.compare_digest(sent, principal.csrf_token):
                raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authentication required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if principal.must_change_password and request.url.path not in PASSWORD_CHANGE_PATHS:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the password must be changed first")
    return principal


def requires(role: str):  # type: ignore[no-untyped-def]
    """A dependency that lets only users with at least this role through."""

    def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.can(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role} role")
        return principal

    return check


CurrentUser = Depends(authenticate)
Viewer = Annotated[Principal, Depends(requires("viewer"))]
Operator = Annotated[Principal, Depends(requires("operator"))]
Admin = Annotated[Principal, Depends(requires("admin"))]
