"""How a service process learns that it should stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT; a service's loop runs until it is set."""
    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return stopping


def any_set(*events: threading.Event | None) -> Callable[[], bool]:
    """A check, cheap enough to call between images, whether any of the events is set: work
    in hand stops once its service is stopping or its lease is lost."""
    present = [event for event in events if event is not None]
    return lambda: any(event.is_set() for event in present)
