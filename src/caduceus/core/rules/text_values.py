"""Tags as mercure's rules see them: every value as its DICOM text.

mercure's receiver writes each tag as text (DCMTK's rendering), so a mercure rule compares
`@SeriesNumber@ == '3'` and splits `@ImageType@.split('\\')`. caduceus' rules see typed values
(numbers, lists). A rule that says `tag_values: text` (every rule imported from a mercure.json)
is given the text, so it keeps the meaning it had in mercure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        # A multi-valued element: its values joined by DICOM's separator, as DCMTK shows it.
        return "\\".join(_text(item) for item in value)
    # pydicom's IS and DS keep the text they were read from, so str() gives it back as sent.
    return str(value)


def as_text(tags: Mapping[str, Any]) -> dict[str, str]:
    """The same tags, each value as mercure's rules would see it."""
    return {keyword: _text(value) for keyword, value in tags.items()}


__all__ = ["as_text"]
