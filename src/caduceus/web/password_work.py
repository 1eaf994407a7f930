"""Password hashing off the event loop, a few at a time.

An argon2 check costs tens of milliseconds of CPU and 64 MiB of memory. Run on the event loop
it stops every other request; run in the shared thread pool (40 threads) a flood of logins
takes every thread and gigabytes. Here at most `workers` run at once, at most `queue` more
wait, and anything beyond is refused at once (503) instead of piling up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class Busy(Exception):
    """Too many password checks are running or waiting: try again shortly."""


class PasswordWork:
    def __init__(self, workers: int = 2, queue: int = 32) -> None:
        self.workers = workers
        self.queue = queue
        self.pending = 0  # running and waiting, counted on the event loop's thread only
        self._limiter: anyio.CapacityLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _capacity(self) -> anyio.CapacityLimiter:
        # A limiter belongs to the event loop it is used in: made there on first use (a test
        # client may run each request in a loop of its own).
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._loop is not loop:
            self._limiter, self._loop = anyio.CapacityLimiter(self.workers), loop
        return self._limiter

    async def run(self, work: Callable[..., T], *args: object) -> T:
        if self.pending >= self.workers + self.queue:
            raise Busy
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(work, *args, limiter=self._capacity())
        finally:
            self.pending -= 1
