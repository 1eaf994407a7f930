"""The processor's fixed limits, each with the reason for its value.

The lease, the parallel workers and the idle wait are in the settings (core/settings.py).
"""

from __future__ import annotations

from datetime import timedelta

# Lines of a failed module's log kept in the failure event: enough to show the error, short
# enough for the event list and a notification.
LOG_TAIL_LINES = 20
# Unexpected failures (a bug, the database gone) after which a task goes to error rather than
# being retried for ever; a module that fails is an error at once, not counted here.
MAX_UNEXPECTED = 3
# The wait after the n-th unexpected failure is n times this: time for the database or the
# disk to come back, short enough that the task is not held up long.
UNEXPECTED_RETRY_STEP = timedelta(seconds=30)
