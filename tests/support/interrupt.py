"""An interruption for `Shipment.interrupted` that comes after a given number of checks."""

from __future__ import annotations

import itertools
from collections.abc import Callable


def after(checks: int) -> Callable[[], bool]:
    """False for the first `checks` calls, True from then on. next() on itertools.count is
    atomic in CPython, so plug-ins that check from several threads count each call once."""
    counter = itertools.count()
    return lambda: next(counter) >= checks
