"""The notifier's fixed batch sizes, delays and retries, each with the reason for its value.

The pass interval is in the settings (core/settings.py).
"""

from __future__ import annotations

from datetime import timedelta

# Events turned into notifications per transaction: a burst is caught up in a few passes
# without one long transaction.
EVENT_BATCH = 500
# The consumer stops before a gap in event ids until the event after the gap is this old: by
# then the missing id belongs to a transaction that rolled back, not one still committing.
GAP_GRACE = timedelta(seconds=30)
# A first start reads the last hour only: a new notifier on an old installation must not mail
# about its whole history.
FIRST_LOOKBACK = timedelta(hours=1)
# Tries of one notification, the waits between them doubling from FIRST_DELAY (at most
# MAX_DELAY): about twenty minutes of retries ride out a restarting mail or webhook server.
MAX_ATTEMPTS = 8
FIRST_DELAY = timedelta(seconds=10)
MAX_DELAY = timedelta(hours=1)
# A notification being sent is claimed this far ahead, well beyond the webhook and mail
# timeouts, so that two notifiers never send it twice.
CLAIM = timedelta(minutes=5)
# Notifications sent per pass: a slow mail server holds up one pass, not the whole backlog.
DELIVERY_BATCH = 20
