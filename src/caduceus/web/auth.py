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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import Engine, and_, delete, insert, select, update

# The user store lives in core (the command line shares it); its names stay reachable here.
from caduceus.core.accounts import ROLES as ROLES
from caduceus.core.accounts import check_new_password as check_new_password
from caduceus.core.accounts import create_user as create_user
from caduceus.core.accounts import hash_password as hash_password
from caduceus.core.accounts import password_matches as password_matches
from caduceus.core.db.models import API_TOKENS, USERS, WEB_SESSIONS
from caduceus.core.events import record_event

log = logging.getLogger("caduceus.web")

SESSION_COOKIE = "caduceus_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = timedelta(hours=12)
TOKEN_TOUCH = timedelta(minutes=1)
INITIAL_PASSWORD_FILE = "initial-admin-password"  # noqa: S105 - a file name, not a password
TOKEN_PREFIX = "cdc_"  # noqa: S105 - a marker that makes leaked tokens easy to find
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


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


# -- users (kept in caduceus.core.accounts) -----------------------------------------------


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


def change_password(
    engine: Engine, user_id: int, password: str, revoke_tokens: bool = True, new_hash: str = ""
) -> None:
    """The user's own change: every session ends, and (unless they say otherwise) every API
    token too, since the change may follow a leak. `new_hash` is the new password's hash when
    the caller made it already (off the event loop)."""
    check_new_password(password)
    with engine.begin() as conn:
        conn.execute(
            update(USERS)
            .where(USERS.c.id == user_id)
            .values(
                password_hash=new_hash or hash_password(password),
                must_change_password=False,
                generation=USERS.c.generation + 1,
            )
        )
        conn.execute(delete(WEB_SESSIONS).where(WEB_SESSIONS.c.user_id == user_id))
        revoked = 0
        if revoke_tokens:
            revoked = conn.execute(
                update(API_TOKENS)
                .where(and_(API_TOKENS.c.user_id == user_id, API_TOKENS.c.revoked.is_(False)))
                .values(revoked=True)
            ).rowcount
        record_event(
            conn,
            "user.password_changed",
            f"user {user_id} changed the password"
            + (f"; {revoked} API token(s) revoked" if revoked else ""),
        )


# -- sessions and tokens ---------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A new login session: the cookie's value and its CSRF token."""

    cookie: str
    csrf_token: str
    must_change_password: bool


def login(
    reader: Engine, writer: Engine, username: str, password: str, address: str
) -> Started | None:
    """A new session for the right password, else None. The password is checked outside any
    transaction: SQLite's write lock is not held while argon2 works."""
    with reader.connect() as conn:
        user = conn.execute(select(USERS).where(USERS.c.username == username)).first()
    # The same argon2 work whether the user exists or not: the time of an answer must not
    # tell which user names exist.
    matches = password_matches(user.password_hash if user else _DUMMY_HASH, password)
    with writer.begin() as conn:
        if user is None or user.disabled or not matches:
            # The name may be a password typed into the wrong box: kept in the details, which
            # only admins are shown (see visible_events).
            record_event(
                conn,
                "login.failed",
                f"failed login for {username[:64]!r} from {address}",
                severity="warning",
                details={"username": username[:64], "address": address},
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
    return Started(cookie, csrf, bool(user.must_change_password))


def visible_events(events: list[dict[str, Any]], who: Principal) -> list[dict[str, Any]]:
    """Events as this user may see them: the user name tried in a failed login (perhaps a
    password typed into the name box) is for admins only."""
    if who.can("admin"):
        return events
    shown = []
    for event in events:
        if event.get("kind") == "login.failed":
            details = event.get("details") or {}
            address = details.get("address") if isinstance(details, dict) else None
            event = {
                **event,
                "message": f"failed login from {address}" if address else "failed login",
                "details": {"address": address} if address else None,
            }
        shown.append(event)
    return shown


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


def identify(request: Request) -> Principal | None:
    """The user behind the request's token or session cookie, if any (no CSRF check)."""
    engine: Engine = request.app.state.engine
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return _from_token(engine, request.app.state.writer, header[7:].strip())
    if cookie := request.cookies.get(SESSION_COOKIE):
        return session_principal(engine, cookie)
    return None


def authenticate(request: Request) -> Principal:
    """The FastAPI dependency behind every route but the login."""
    principal = identify(request)
    if principal is not None and principal.via == "session" and request.method in UNSAFE_METHODS:
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
