"""A target's connection test for the web: the plug-in's own test(), within a time limit.

A target that never answers (a firewall that drops packets) must not hold the page for
minutes: the test runs in a thread of its own, and the answer comes when the limit is up,
whether the thread has finished or not (it ends by itself when its own timeouts expire).
"""

from __future__ import annotations

import threading

from pydantic import SecretStr

from caduceus.core.config.models import MASK, TargetSettings
from caduceus.dispatcher.interface import TargetError, check_target


def _without_secrets(message: str, target: TargetSettings) -> str:
    # A library's error may quote what it sent (a URL with its token, a login).
    for name in type(target).model_fields:
        value = getattr(target, name)
        if isinstance(value, SecretStr) and value.get_secret_value():
            message = message.replace(value.get_secret_value(), MASK)
    return message


def check_connection(target: TargetSettings, seconds: float) -> tuple[bool, str]:
    """(whether the target answered, what it said or what failed)."""
    outcome: list[tuple[bool, str]] = []

    def run() -> None:
        try:
            outcome.append((True, check_target(target)))
        except TargetError as exc:
            outcome.append((False, str(exc)))
        except Exception as exc:  # a library's own error: still an answer for the page
            outcome.append((False, f"{type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=run, name="target-test", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        return False, f"no answer within {seconds:.0f} s"
    ok, message = outcome[0]
    return ok, _without_secrets(message, target)
