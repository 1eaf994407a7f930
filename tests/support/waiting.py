"""Waiting for something another process does: a condition to hold, a port to listen.

One home for the polling loops the tests share, so each waits the same way: a deadline on the
monotonic clock (a wall clock step must not end a wait early or stretch it), a short pause
between looks, and a last look at the deadline.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float = 90, interval: float = 0.2) -> bool:
    """Whether the condition held within the timeout; the caller asserts, with its message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def wait_for_port(
    port: int,
    timeout: float = 60.0,
    process: subprocess.Popen[bytes] | None = None,
    address: str = "127.0.0.1",
) -> None:
    """Until something accepts connections on address:port. With the process that is to
    listen, its early exit ends the wait at once instead of at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {address}:{port} after {timeout}s")
