"""A cap on the size of a request's body, applied while the body arrives.

FastAPI reads and parses a route's JSON body before the route's dependencies run, the login
check among them: without a cap, anyone who reaches the port could make the web process hold
and parse a body of any size. The largest body the interface sends is a configuration file
to import, a few hundred kilobytes for a large installation.
"""

from __future__ import annotations

from fastapi import status
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 10 * 1024 * 1024
TOO_LARGE = f"the request's body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB"


class BodyLimit:
    """ASGI middleware: 413 for a body over the limit, declared or sent in chunks."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await _refuse(scope, receive, send)
            return
        received = 0
        refused = False

        async def limited() -> Message:
            # A chunked body declares no length: counted as it comes, so a liar is cut off too.
            # The 413 is sent from here, and the application is told the client went away
            # (an exception would reach it wrapped, and turn into its own 400).
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    await _refuse(scope, receive, send)
            return {"type": "http.disconnect"} if refused else message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, unless_refused)


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    answer = JSONResponse({"detail": TOO_LARGE}, status.HTTP_413_CONTENT_TOO_LARGE)
    await answer(scope, receive, send)
