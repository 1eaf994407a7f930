"""Times on the pages: in the configured zone (the configuration's `local_time`), with the
UTC time on hover. Stored times, logs and the API stay UTC; only what a page shows changes.

Every page and fragment renders inside `shown_in(...)` (rendering.py), so the template
filters `when` and `when_text` know the zone without every template passing it along, also
in macros imported without the page's context.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from fastapi import Request
from markupsafe import Markup, escape
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from caduceus.core.clock import as_utc
from caduceus.core.db.models import CONFIG_VERSIONS
from caduceus.core.time_zones import DEFAULT_ZONE, zone_named
from caduceus.web.api.engines import reader

log = logging.getLogger("caduceus.web")

SHOWN = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class ShownZone:
    name: str
    zone: tzinfo
    version: int | None = None  # the configuration version it was read from


UTC_ZONE = ShownZone("UTC", UTC)
_shown: ContextVar[ShownZone] = ContextVar("shown_zone", default=UTC_ZONE)


def configured_zone(request: Request) -> ShownZone:
    """The zone of the newest configuration version. Read once per version and process: a
    page costs one look at the newest version's number."""
    cached: ShownZone | None = getattr(request.state, "shown_zone", None)
    if cached is not None:
        return cached
    try:
        known = _newest_zone(request)
    except SQLAlchemyError:  # an error page while the database is away: it shows UTC
        return UTC_ZONE
    request.state.shown_zone = known
    return known


def _newest_zone(request: Request) -> ShownZone:
    state = request.app.state
    with reader(request).connect() as conn:
        newest = conn.execute(select(func.max(CONFIG_VERSIONS.c.id))).scalar()
        known: ShownZone | None = getattr(state, "shown_zone", None)
        if known is None or known.version != newest:
            content = None
            if newest is not None:
                content = conn.execute(
                    select(CONFIG_VERSIONS.c.content).where(CONFIG_VERSIONS.c.id == newest)
                ).scalar()
            known = _zone_of(content, newest)
            state.shown_zone = known
    return known


def _zone_of(content: object, version: int | None) -> ShownZone:
    settings = content.get("settings") if isinstance(content, dict) else None
    name = settings.get("local_time") if isinstance(settings, dict) else None
    if not isinstance(name, str) or not name:
        name = DEFAULT_ZONE
    try:
        return ShownZone(name, zone_named(name), version)
    except ValueError as exc:  # a stored version whose zone this system lost: UTC, and why
        log.warning("showing times in UTC: local_time %s", exc)
        return ShownZone("UTC", UTC, version)


@contextmanager
def shown_in(zone: ShownZone) -> Iterator[None]:
    token = _shown.set(zone)
    try:
        yield
    finally:
        _shown.reset(token)


def zone_name() -> str:
    """The name of the zone the page shows times in, for column headings."""
    return _shown.get().name


def _parsed(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def local(value: datetime, zone: ShownZone | None = None) -> datetime:
    """A stored time in the shown zone (aware)."""
    return as_utc(value).astimezone((zone or _shown.get()).zone)


def when(value: datetime | str | None, precise: bool = False) -> Markup:
    """A stored time as every page shows it: in the configured zone, to the second (to the
    millisecond if `precise`), in a <time> whose title is the UTC time."""
    moment = _parsed(value)
    if moment is None:
        return Markup("") if value in (None, "") else escape(str(value))
    shown_format = SHOWN + (".%f" if precise else "")
    cut = -3 if precise else None  # microseconds to milliseconds
    shown = local(moment).strftime(shown_format)[:cut]
    utc = moment.strftime(shown_format)[:cut] + " UTC"
    iso = moment.isoformat().replace("+00:00", "Z")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(iso, utc, shown)


def when_text(value: datetime | str | None) -> str:
    """The same time as plain text, for where no markup may go (an option, an attribute)."""
    moment = _parsed(value)
    if moment is None:
        return "" if value is None else str(value)
    return local(moment).strftime(SHOWN)
