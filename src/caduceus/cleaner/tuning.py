"""The cleaner's fixed batch sizes and disk-pressure bounds, each with the reason for its value.

The pass interval, retentions and water marks are in the settings and the configuration.
"""

from __future__ import annotations

# Task folders or series looked at per query in one pass: each removal is file work, so a pass
# stays short and the service notices a stop quickly; disk pressure looks at ten times this.
BATCH = 200
# History rows deleted per table in one pass, each batch in a transaction of its own: enough
# to keep up with a busy site, few enough that one delete does not hold SQLite's lock long.
HISTORY_BATCH = 5000
# Disk pressure starts below this many receiver reserves of free space, before the receiver
# refuses, and ends at RELIEF_RESERVES, so that receiving resumes with room to spare.
PRESSURE_RESERVES = 2
RELIEF_RESERVES = 3
