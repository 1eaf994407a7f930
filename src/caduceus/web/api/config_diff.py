"""The difference between two configuration versions, as a reader of a review expects it.

Both documents are pretty-printed with sorted keys before they are compared, so that only a
changed value shows up, never a key that merely moved.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any


def pretty(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)


def unified_diff(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> str:
    lines = difflib.unified_diff(
        pretty(old).splitlines(),
        pretty(new).splitlines(),
        fromfile=old_name,
        tofile=new_name,
        lineterm="",
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "del", "hunk", "file" or "same": the class the page gives the line
    text: str


def classify(diff: str) -> list[DiffLine]:
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++ ", "--- ")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "same"
        out.append(DiffLine(kind, line))
    return out
