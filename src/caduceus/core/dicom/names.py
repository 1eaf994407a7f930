"""Safe file-system names for values that come from DICOM.

A UID is only used as a name when it is a well-formed UID; anything else (``../../x``, control
characters, over-long values) is replaced by a digest, so no DICOM value can steer a path.
"""

from __future__ import annotations

import hashlib
import re

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_valid_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def safe_name(value: str) -> str:
    """A name that is a single path component made of digits, dots, letters and dashes only."""
    if is_valid_uid(value):
        return value
    return "x-" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:40]
