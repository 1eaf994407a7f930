"""Users of the web interface and the API: the store, the password hashes, the roles, and the
changes an administrator makes, shared by the web's Users page and `caduceus users`.

Passwords are argon2id hashes. A change that must end a user's access at once (a demotion,
a disabling, a new password) bumps the user's generation, which voids every session made
before it, and deletes the sessions; a disabling or a new password set by an administrator
also revokes the user's API tokens, since either may follow a leak. Nothing here leaves no
enabled admin: nobody could undo that from the web.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update

from caduceus.core.db.models import API_TOKENS, USERS, WEB_SESSIONS
from caduceus.core.events import record_event

ROLES = ("viewer", "operator", "admin")
USERNAME = r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$"
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_hasher = PasswordHasher()


class AccountError(ValueError):
    """A change to the users that is refused; the message says why, for a person."""


class NoSuchUser(AccountError):
    pass


class NameTaken(AccountError):
    pass


class LastAdmin(AccountError):
    pass


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")


def check_username(username: str) -> None:
    if not re.match(USERNAME, username):
        raise AccountError(
            "a user name is 1 to 64 letters, digits and _ . @ -, starting with a letter or digit"
        )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")


def create_user(
    engine: Engine,
    username: str,
    password: str,
    role: str,
    must_change: bool = False,
    author: str = "",
) -> int:
    check_role(role)
    check_new_password(password)
    password_hash = hash_password(password)  # argon2 works outside the transaction
    with engine.begin() as conn:
        if conn.execute(select(USERS.c.id).where(USERS.c.username == username)).first():
            raise NameTaken(f"the user name {username!r} is taken")
        user_id = conn.execute(
            insert(USERS)
            .values(
                username=username,
                password_hash=password_hash,
                role=role,
                must_change_password=must_change,
                disabled=False,
                created_at=datetime.now(UTC),
                generation=0,
            )
            .returning(USERS.c.id)
        ).scalar_one()
        record_event(
            conn,
            "user.created",
            f"user {username} ({role})" + (f" created by {author}" if author else ""),
            details={"user": username, "role": role, "by": author} if author else None,
        )
    return int(user_id)


def list_users(engine: Engine) -> list[dict[str, Any]]:
    """Every user, by name: never the password hashes."""
    with engine.connect() as conn:
        return [
            dict(row._mapping)
            for row in conn.execute(
                select(
                    USERS.c.id,
                    USERS.c.username,
                    USERS.c.role,
                    USERS.c.disabled,
                    USERS.c.must_change_password,
                    USERS.c.created_at,
                ).order_by(USERS.c.username)
            )
        ]


def user_id_of(engine: Engine, username: str) -> int:
    with engine.connect() as conn:
        found = conn.execute(select(USERS.c.id).where(USERS.c.username == username)).scalar()
    if found is None:
        raise NoSuchUser(f"there is no user named {username!r}")
    return int(found)


@dataclass(frozen=True)
class Changed:
    """What a change did: the values shown (never a hash) and how many tokens it revoked."""

    user_id: int
    username: str
    shown: dict[str, Any]
    tokens_revoked: int


def change_user(
    engine: Engine,
    user_id: int,
    author: str,
    *,
    role: str | None = None,
    disabled: bool | None = None,
    password: str | None = None,
    must_change: bool = True,
) -> Changed:
    """An administrator's change of a user: role, enabled or disabled, a new password (which
    the user must change at the next login unless `must_change` is false). Every session of
    the user ends; a disabling or a new password revokes the user's API tokens too."""
    values: dict[str, Any] = {}
    if role is not None:
        check_role(role)
        values["role"] = role
    if disabled is not None:
        values["disabled"] = disabled
    if password is not None:
        check_new_password(password)
        values["password_hash"] = hash_password(password)  # outside the transaction
        values["must_change_password"] = must_change
    if not values:
        raise AccountError("nothing to change")
    shown = {k: v for k, v in values.items() if k != "password_hash"}
    with engine.begin() as conn:
        username = conn.execute(select(USERS.c.username).where(USERS.c.id == user_id)).scalar()
        if username is None:
            raise NoSuchUser(f"there is no user {user_id}")
        if role not in (None, "admin") or disabled:
            keep_an_admin(conn, user_id)
        conn.execute(
            update(USERS)
            .where(USERS.c.id == user_id)
            .values(generation=USERS.c.generation + 1, **values)
        )
        conn.execute(delete(WEB_SESSIONS).where(WEB_SESSIONS.c.user_id == user_id))
        revoked = 0
        if password is not None or disabled:  # a reset or a lock-out may follow a leak
            revoked = conn.execute(
                update(API_TOKENS)
                .where(and_(API_TOKENS.c.user_id == user_id, API_TOKENS.c.revoked.is_(False)))
                .values(revoked=True)
            ).rowcount
        said = [f"role {role}"] if role is not None else []
        if disabled is not None:
            said.append("disabled" if disabled else "enabled")
        if password is not None:
            said.append("new password set")
        record_event(
            conn,
            "user.changed",
            f"user {username} changed by {author}: "
            + ", ".join(said)
            + (f"; {revoked} API token(s) revoked" if revoked else ""),
            details={"user": username, "by": author, **shown, "tokens_revoked": revoked},
        )
    return Changed(user_id, str(username), shown, revoked)


def remove_user(engine: Engine, user_id: int, author: str) -> None:
    with engine.begin() as conn:
        keep_an_admin(conn, user_id)
        username = conn.execute(select(USERS.c.username).where(USERS.c.id == user_id)).scalar()
        if username is None:
            raise NoSuchUser(f"there is no user {user_id}")
        conn.execute(delete(WEB_SESSIONS).where(WEB_SESSIONS.c.user_id == user_id))
        conn.execute(delete(API_TOKENS).where(API_TOKENS.c.user_id == user_id))
        conn.execute(delete(USERS).where(USERS.c.id == user_id))
        record_event(
            conn,
            "user.removed",
            f"user {username} removed by {author}",
            details={"user": username, "by": author},
        )


def keep_an_admin(conn: Connection, user_id: int) -> None:
    """Refuse a change of this user that would leave no enabled admin: nobody could undo it."""
    # Two admins demoting each other at the same moment must not both pass the count: the
    # admins' rows stay locked until this transaction ends (SQLite's writer lock does the
    # same there).
    conn.execute(select(USERS.c.id).where(USERS.c.role == "admin").with_for_update()).all()
    others = conn.execute(
        select(func.count()).where(
            and_(USERS.c.role == "admin", USERS.c.disabled.is_(False), USERS.c.id != user_id)
        )
    ).scalar_one()
    if not others:
        raise LastAdmin("this would leave no enabled admin")
