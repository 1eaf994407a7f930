"""A cap on the size of a request's body, applied while the body arrives.

FastAPI reads and parses a route's JSON body before the route's dependencies run, the login
check among them: without a cap, anyone who reaches the port could make the web process hold
and parse a body of any size (a flat 10 MB JSON document costs some 500 MB to parse). So:

- a body to an open route (the login) may be a few kilobytes, whoever sends it;
- a larger body is read only from a known user: when it grows past the small limit, the
  request's token or session cookie is looked up before another byte is let through;
- no body is larger than the general limit. The largest body the interface sends is a
  configuration file to import, a few hundred kilobytes for a large installation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import status
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 10 * 1024 * 1024
ANONYMOUS_BODY_BYTES = 8192

KnownUser = Callable[[Scope], Awaitable[bool]]


async def _known_user(scope: Scope) -> bool:
    """Whether the request carries a valid token or session (a database lookup)."""
    from caduceus.web.auth import identify

    request = Request(scope)
    if "authorization" not in request.headers and not request.cookies:
        return False
    return await run_in_threadpool(identify, request) is not None


class BodyLimit:
    """ASGI middleware: 413 for a body over its limit, declared or sent in chunks."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int = MAX_BODY_BYTES,
        anonymous_limit: int = ANONYMOUS_BODY_BYTES,
        anonymous_paths: frozenset[str] = frozenset(),
        known_user: KnownUser = _known_user,
    ) -> None:
        self.app = app
        self.limit = limit
        self.anonymous_limit = anonymous_limit
        self.anonymous_paths = anonymous_paths
        self.known_user = known_user

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if scope["path"] in self.anonymous_paths:
            limit = self.anonymous_limit
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.anonymous_limit:
            if int(declared) > limit or not await self.known_user(scope):
                await _refuse(scope, receive, send, limit)
                return
            limit = self.limit  # a known user: checked once
        received = 0
        refused = False
        checked = limit == self.anonymous_limit or declared.isdigit()

        async def limited() -> Message:
            # A chunked body declares no length: counted as it comes, so a liar is cut off too.
            # The 413 is sent from here, and the application is told the client went away
            # (an exception would reach it wrapped, and turn into its own 400).
            nonlocal received, refused, checked
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                over = received > self.anonymous_limit and not checked
                if over:
                    checked = True
                if received > limit or (over and not await self.known_user(scope)):
                    refused = True
                    shown = limit if received > limit else self.anonymous_limit
                    await _refuse(scope, receive, send, shown)
            return {"type": "http.disconnect"} if refused else message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, unless_refused)


def too_large(limit: int) -> str:
    if limit >= 1024 * 1024:
        return f"the request's body is larger than {limit // (1024 * 1024)} MiB"
    return f"the request's body is larger than {limit // 1024} KiB allowed here"


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    answer = JSONResponse({"detail": too_large(limit)}, status.HTTP_413_CONTENT_TOO_LARGE)
    await answer(scope, receive, send)
