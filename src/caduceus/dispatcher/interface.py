"""What others may ask of the dispatcher; the only dispatcher module the web and the CLI import.

An operator's restart of a failed task, and a target's connection test. Sending itself the
dispatcher does by itself, claiming queued tasks from the database.
"""

from __future__ import annotations

from sqlalchemy import Engine

from caduceus.core.config.models import TargetSettings
from caduceus.dispatcher import dispatch
from caduceus.dispatcher.targets import TargetError, plugin_for

__all__ = ["TargetError", "check_target", "restart"]


def restart(engine: Engine, task_id: str, author: str = "") -> int:
    """Run a failed task again from where it failed, recorded as restarted by `author`.

    A task whose processing failed goes back to the processor at the step that failed
    (returns 0); otherwise only its failed targets are sent again, with fresh attempts
    (returns how many). Raises LookupError, with a message for the operator, when there is
    no such task, it is not in error, or the cleaner has removed its files."""
    return dispatch.restart(engine, task_id, author)


def check_target(target: TargetSettings) -> str:
    """Ask a target whether it answers, with its type's own test (a C-ECHO, a write to the
    folder or bucket, a request to the DICOMweb server, an SFTP login); returns what it said.

    Raises TargetError with what failed; a library's own exception may pass through. It can
    take as long as the target's own timeouts: a caller that must answer sooner runs it in a
    thread of its own."""
    return plugin_for(target).test()
