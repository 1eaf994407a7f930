"""The tags a rule sees: every top-level attribute of a series' instance, by keyword.

The router, the rule test of the web and the CLI, the series page and the self-test must all
see the same tags for a series, or a rule tried by hand would judge other values than the
router does. So the reading lives here once: `read_tags` for one file, `stored_tags` for a
file of the data root, and `series_tags` for a received series (its newest stored instance,
the one the router reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from sqlalchemy import Engine, select

from caduceus.core.db.models import INSTANCES, SERIES
from caduceus.core.rules.tagnames import number_key
from caduceus.core.storage import DataRoot

# Values larger than this (binary data, long text) are left out of the rule's view.
MAX_VALUE = 4096


class UnreadableSeries(Exception):
    """The tags cannot be read: the file is not DICOM, damaged, or not where it should be."""


class SeriesNotStored(UnreadableSeries):
    """The series' newest instance is recorded but its file is gone (the cleaner removed it)."""


def _plain(element: DataElement) -> Any:
    value = element.value
    if element.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or value is None:
        return None
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) if isinstance(v, PersonName) else v for v in value]
    if isinstance(value, bytes):
        return None
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE else None
    return value


def read_tags(path: Path) -> dict[str, Any]:
    """Keyword -> value for the header of one file (pixel data is not read)."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # any reader failure means: this series cannot be judged
        raise UnreadableSeries(f"{path.name}: {exc}") from exc
    tags: dict[str, Any] = {}
    for element in ds:
        # Private and unknown elements by number, so rules can name them (see rules.tagnames).
        keyword = element.keyword or number_key(element.tag.group, element.tag.element)
        plain = _plain(element)
        if plain is not None:
            tags[keyword] = plain
    return tags


def stored_tags(root: DataRoot, relative: str) -> dict[str, Any]:
    """The tags of a file of the data root, by the path the database records for it.

    Every failure is an UnreadableSeries, a recorded path that leaves the data root too, so
    a caller handles one exception, not three.
    """
    try:
        return read_tags(root.absolute(relative))
    except (OSError, ValueError) as exc:
        raise UnreadableSeries(str(exc)) from exc


def series_tags(
    engine: Engine,
    root: DataRoot,
    *,
    series_id: int | None = None,
    series_uid: str | None = None,
) -> dict[str, Any] | None:
    """The tags of a received series, named by its row id or its UID: the header of its
    newest stored instance, as the router reads it when the series completes.

    None when no instance of the series is recorded (an unknown series, or one whose
    records were pruned); SeriesNotStored when the file is recorded but gone; any other
    failure to read is an UnreadableSeries.
    """
    query = select(INSTANCES.c.path).order_by(INSTANCES.c.id.desc()).limit(1)
    if series_id is not None:
        query = query.where(INSTANCES.c.series_id == series_id)
    elif series_uid is not None:
        query = query.join(SERIES, SERIES.c.id == INSTANCES.c.series_id).where(
            SERIES.c.series_uid == series_uid
        )
    else:
        raise TypeError("series_tags needs a series_id or a series_uid")
    with engine.connect() as conn:
        relative = conn.execute(query).scalar()
    if relative is None:
        return None
    try:
        present = root.absolute(relative).is_file()
    except (OSError, ValueError) as exc:
        raise UnreadableSeries(str(exc)) from exc
    if not present:
        raise SeriesNotStored(f"{Path(relative).name}: the file is no longer stored")
    return stored_tags(root, relative)
