"""Logging in and out, one's own account, users (admins) and API tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field
from sqlalchemy import Engine, and_, select, update
from starlette.concurrency import run_in_threadpool

from caduceus.core import accounts
from caduceus.core.db.models import API_TOKENS, USERS
from caduceus.core.events import record_event
from caduceus.core.ids import RowId
from caduceus.web import auth
from caduceus.web.api.engines import reader, writer
from caduceus.web.auth import ROLES, Admin, Principal, Viewer
from caduceus.web.password_work import Busy, PasswordWork
from caduceus.web.throttle import LoginThrottle, PasswordCheckThrottle, retry_after

router = APIRouter(prefix="/api", tags=["accounts"])


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=accounts.MAX_PASSWORD)


@router.post("/login")
async def login(request: Request, response: Response, credentials: Credentials) -> dict[str, Any]:
    """Start a session: an HttpOnly, SameSite=Strict cookie, and the CSRF token to send back
    in the X-CSRF-Token header with every change."""
    throttle: LoginThrottle = request.app.state.throttle
    address = request.client.host if request.client else "unknown"
    wait = throttle.attempt(address, credentials.username)
    if wait:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many logins from this address; try again later",
            headers=retry_after(wait),
        )
    started: auth.Started | None = None
    tried = False
    try:
        started = await passwords(request).run(
            auth.login,
            reader(request),
            writer(request),
            credentials.username,
            credentials.password,
            address,
        )
        tried = True
    except Busy:
        raise _busy() from None
    finally:
        throttle.finished(address, credentials.username, failed=tried and started is None)
    if started is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password")
    response.set_cookie(
        auth.SESSION_COOKIE,
        started.cookie,
        max_age=int(auth.SESSION_LIFETIME.total_seconds()),
        httponly=True,
        samesite="strict",
        # Always over HTTPS; over plain HTTP only where the administrator has not said that
        # the interface is reached through HTTPS (then the browser would drop the cookie).
        secure=request.app.state.settings.web_secure_cookies or request.url.scheme == "https",
        path="/",
    )
    return {"csrf_token": started.csrf_token, "must_change_password": started.must_change_password}


def passwords(request: Request) -> PasswordWork:
    return request.app.state.passwords  # type: ignore[no-any-return]


def _busy() -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "too many password checks at once; try again shortly",
        headers=retry_after(1),
    )


@router.post("/logout")
def logout(request: Request, response: Response, _: Principal = auth.CurrentUser) -> dict[str, str]:
    if cookie := request.cookies.get(auth.SESSION_COOKIE):
        auth.logout(writer(request), cookie)
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return {"state": "logged out"}


@router.get("/me")
def me(who: Principal = auth.CurrentUser) -> dict[str, Any]:
    return {
        "username": who.username,
        "role": who.role,
        "must_change_password": who.must_change_password,
        "csrf_token": who.csrf_token,
    }


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(min_length=10, max_length=1024)
    revoke_tokens: bool = Field(
        default=True, description="Revoke one's API tokens too (the password may have leaked)."
    )


@router.post("/me/password")
async def change_password(
    request: Request, change: PasswordChange, who: Principal = auth.CurrentUser
) -> dict[str, str]:
    """Every session of the user ends, this one too: log in again with the new password. The
    user's API tokens are revoked too unless `revoke_tokens` is false. Wrong current passwords
    are throttled per user."""
    throttle: PasswordCheckThrottle = request.app.state.password_throttle
    wait = throttle.attempt(who.user_id)
    if wait:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many wrong current passwords; try again later",
            headers=retry_after(wait),
        )
    if change.new_password == change.current_password:
        throttle.not_failed(who.user_id)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "choose a new password")
    try:
        new_hash = await passwords(request).run(
            _check_and_hash, reader(request), who.user_id, change
        )
    except Busy:
        throttle.not_failed(who.user_id)
        raise _busy() from None
    if new_hash is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the current password is wrong")
    throttle.not_failed(who.user_id)
    await run_in_threadpool(
        auth.change_password,
        writer(request),
        who.user_id,
        change.new_password,
        change.revoke_tokens,
        new_hash,
    )
    _forget_initial_password(request, change.current_password)
    return {"state": "password changed; log in again"}


def _check_and_hash(engine: Engine, user_id: int, change: PasswordChange) -> str | None:
    """The new password's hash if the current one is right, else None (both argon2 work)."""
    with engine.connect() as conn:
        stored = conn.execute(
            select(USERS.c.password_hash).where(USERS.c.id == user_id)
        ).scalar_one()
    if not auth.password_matches(stored, change.current_password):
        return None
    return auth.hash_password(change.new_password)


def _forget_initial_password(request: Request, old_password: str) -> None:
    """The generated first password has done its job once it is changed: its file goes, so
    no copy of a password lies around (only if the file holds the password just replaced)."""
    path = request.app.state.settings.home / auth.INITIAL_PASSWORD_FILE
    try:
        if path.read_text().strip() == old_password:
            path.unlink()
    except OSError:
        pass  # no file, or not ours to read: nothing to forget


# -- users ------------------------------------------------------------------------------------


class NewUser(BaseModel):
    username: str = Field(pattern=accounts.USERNAME)
    password: str = Field(min_length=accounts.MIN_PASSWORD, max_length=accounts.MAX_PASSWORD)
    role: str = Field(pattern="^(" + "|".join(ROLES) + ")$")


class UserChange(BaseModel):
    role: str | None = Field(default=None, pattern="^(" + "|".join(ROLES) + ")$")
    disabled: bool | None = None
    password: str | None = Field(
        default=None, min_length=accounts.MIN_PASSWORD, max_length=accounts.MAX_PASSWORD
    )


def _refused(exc: accounts.AccountError) -> HTTPException:
    if isinstance(exc, accounts.NoSuchUser):
        return HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
    if isinstance(exc, accounts.NameTaken):
        return HTTPException(status.HTTP_409_CONFLICT, "that user name is taken")
    if isinstance(exc, accounts.LastAdmin):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


@router.get("/users")
def users(request: Request, _: Admin) -> list[dict[str, Any]]:
    return accounts.list_users(reader(request))


@router.post("/users", status_code=status.HTTP_201_CREATED)
def add_user(request: Request, user: NewUser, who: Admin) -> dict[str, Any]:
    try:
        user_id = accounts.create_user(
            writer(request),
            user.username,
            user.password,
            user.role,
            must_change=True,
            author=who.username,
        )
    except accounts.AccountError as exc:
        raise _refused(exc) from None
    return {"id": user_id, "username": user.username, "role": user.role}


@router.patch("/users/{user_id}")
def change_user(request: Request, user_id: RowId, change: UserChange, who: Admin) -> dict[str, Any]:
    """A demotion, a disabling or a new password ends the user's sessions at once; a
    disabling or a new password revokes the user's API tokens too."""
    try:
        changed = accounts.change_user(
            writer(request),
            user_id,
            who.username,
            role=change.role,
            disabled=change.disabled,
            password=change.password,
        )
    except accounts.AccountError as exc:
        raise _refused(exc) from None
    return {"id": user_id, **changed.shown}


@router.delete("/users/{user_id}")
def remove_user(request: Request, user_id: RowId, who: Admin) -> dict[str, Any]:
    if user_id == who.user_id:
        raise HTTPException(status.HTTP_409_CONFLICT, "you cannot remove yourself")
    try:
        accounts.remove_user(writer(request), user_id, who.username)
    except accounts.AccountError as exc:
        raise _refused(exc) from None
    return {"removed": user_id}


# -- API tokens -------------------------------------------------------------------------------


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=100)


@router.get("/tokens")
def tokens(request: Request, who: Viewer) -> list[dict[str, Any]]:
    """One's own tokens (never the tokens themselves)."""
    with reader(request).connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(
                select(
                    API_TOKENS.c.id,
                    API_TOKENS.c.name,
                    API_TOKENS.c.created_at,
                    API_TOKENS.c.last_used_at,
                    API_TOKENS.c.revoked,
                ).where(API_TOKENS.c.user_id == who.user_id)
            )
        ]


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
def new_token(request: Request, token: NewToken, who: Viewer) -> dict[str, str]:
    """The token is shown this once; it acts with its owner's role."""
    return {
        "name": token.name,
        "token": auth.create_token(writer(request), who.user_id, token.name),
    }


@router.delete("/tokens/{token_id}")
def revoke_token(request: Request, token_id: RowId, who: Viewer) -> dict[str, Any]:
    with writer(request).begin() as conn:
        found = conn.execute(
            update(API_TOKENS)
            .where(and_(API_TOKENS.c.id == token_id, API_TOKENS.c.user_id == who.user_id))
            .values(revoked=True)
        ).rowcount
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such token")
        record_event(conn, "token.revoked", f"API token {token_id} of {who.username}", details=None)
    return {"revoked": token_id, "at": datetime.now(UTC).isoformat()}
