"""The tags a rule sees: every top-level attribute of a series' instance, by keyword."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

# Values larger than this (binary data, long text) are left out of the rule's view.
MAX_VALUE = 4096


class UnreadableSeries(Exception):
    pass


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
        keyword = element.keyword
        if keyword:
            plain = _plain(element)
            if plain is not None:
                tags[keyword] = plain
    return tags
