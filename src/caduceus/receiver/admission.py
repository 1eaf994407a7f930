"""Whether the disk has room to admit one more received instance.

The receiver stops admitting while free space is below the reserve, so that what lies below it
stays for the database and the pipeline's own files (task folders, task.json, module results):
with that room the router, processor and dispatcher keep moving, tasks finish, the cleaner frees
their space, and receiving resumes. A sender that is refused (A700) keeps its copy and retries.
"""

from __future__ import annotations

from caduceus.core.settings import DISK_RESERVE_FLOOR_MB
from caduceus.core.storage import DataRoot

FLOOR_BYTES = DISK_RESERVE_FLOOR_MB * 1024 * 1024


def disk_admits(root: DataRoot, reserve_bytes: int) -> bool:
    # The floor holds here too, for a configuration built without the validated settings.
    return root.free_bytes() >= max(reserve_bytes, FLOOR_BYTES)


# How often a file being written asks again: a statvfs costs microseconds, and a writer may
# pass the reserve by at most this much before it stops.
CHECK_EVERY = 4 * 1024 * 1024


class RoomGuard:
    """The reserve asked again while one file grows: an instance admitted just above the
    reserve, or a deflated one inflating a thousandfold, must not write into it."""

    def __init__(self, root: DataRoot, reserve_bytes: int):
        self.root = root
        self.reserve_bytes = reserve_bytes
        self.unchecked = 0

    def admits(self, more: int) -> bool:
        """Whether `more` bytes may still be written."""
        self.unchecked += more
        if self.unchecked < CHECK_EVERY:
            return True
        self.unchecked = 0
        return disk_admits(self.root, self.reserve_bytes)
