"""The dispatcher's fixed limits, each with the reason for its value.

The retry delay and count are in the configuration (retry_delay, retry_max); the lease and the
idle wait in the settings (core/settings.py).
"""

from __future__ import annotations

from datetime import timedelta

# The longest wait between two tries of one target, however many failed: a target that is
# down for a day is still tried a few times a day, and comes back within hours.
MAX_BACKOFF = timedelta(hours=6)
