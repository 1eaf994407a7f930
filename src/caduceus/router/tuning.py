"""The router's fixed pacing and batch sizes, each with the reason for its value.

What an operator may want to change is in the settings (core/settings.py); these are tied to
how the router works and are not meant to be turned.
"""

from __future__ import annotations

from datetime import timedelta

# The longest sleep between passes (seconds), also the pause after a failed pass: a new
# arrival is noticed, and a trigger that fires becomes a task, in well under a second.
MAX_SLEEP = 1.0
# The shortest sleep (seconds): a group that falls due at once must not make the loop spin.
MIN_SLEEP = 0.05
# Groups completed per query in one pass: enough for a burst, few enough that one pass (and
# its transactions) stays short.
BATCH = 200
# How soon a pass that found the data root full is tried again: the cleaner may free space
# within seconds, and trying sooner would only fill the log.
NO_SPACE_RETRY = timedelta(seconds=5)
