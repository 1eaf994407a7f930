"""The time zone the web interface shows times in (mercure's `local_time`).

Everything caduceus stores, logs and answers through the API is UTC; only the pages turn a
time into the configured zone, with the UTC time beside it on hover.
"""

from __future__ import annotations

from datetime import UTC, tzinfo
from zoneinfo import ZoneInfo

DEFAULT_ZONE = "UTC"  # mercure's default for local_time


def zone_named(name: str) -> tzinfo:
    """The zone of an IANA name ("Europe/Berlin", "UTC"); ValueError names a wrong one."""
    if name in ("UTC", "Etc/UTC"):
        return UTC  # needs no time zone database
    try:
        return ZoneInfo(name)
    except (ValueError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError: below
        raise ValueError(_unknown(name)) from exc
    except KeyError:
        raise ValueError(_unknown(name)) from None


def _unknown(name: str) -> str:
    return (
        f"{name[:64]!r} is not a time zone this system knows: an IANA name such as "
        "'Europe/Berlin', 'America/New_York' or 'UTC'"
    )
