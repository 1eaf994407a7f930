"""Retention and caps for quarantine/, where the receiver keeps the instances it refused.

Quarantined files are kept for inspection only: nobody's work depends on them, and a hostile
or broken sender can make many of them. So they go after `quarantine_retention`, and beyond
`quarantine_max_mb` or `quarantine_max_files` the oldest go first until both hold again. Each
pass that removes any records one `quarantine.cleaned` event per reason with the counts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from caduceus.core.config.models import Settings
from caduceus.core.events import record_event
from caduceus.core.storage import DataRoot

log = logging.getLogger("caduceus.cleaner")


@dataclass
class Removed:
    files: int = 0
    bytes: int = 0


@dataclass(order=True)
class _Kept:
    mtime: float
    path: str
    size: int


def _listing(folder: Path) -> list[_Kept]:
    """Every file under quarantine/<day>/, oldest first."""
    found: list[_Kept] = []
    try:
        days = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    for day in days:
        if not day.is_dir(follow_symlinks=False):
            continue
        try:
            entries = list(os.scandir(day.path))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.append(_Kept(st.st_mtime, entry.path, st.st_size))
            except FileNotFoundError:
                continue
    found.sort()
    return found


def _remove(kept: _Kept, removed: Removed) -> None:
    try:
        os.unlink(kept.path)
    except FileNotFoundError:
        return
    removed.files += 1
    removed.bytes += kept.size


def _remove_empty_days(folder: Path, now: datetime) -> None:
    # Today's folder stays even when empty: the receiver may be about to move a file into it.
    today = now.strftime("%Y%m%d")
    for day in folder.iterdir() if folder.is_dir() else ():
        if day.is_dir() and day.name < today:
            try:
                day.rmdir()
            except OSError:
                continue  # not empty


def clean_quarantine(engine: Engine, root: DataRoot, settings: Settings, now: datetime) -> Removed:
    files = _listing(root.quarantine)
    cutoff = now.timestamp() - settings.quarantine_retention
    old = 0
    while old < len(files) and files[old].mtime < cutoff:
        old += 1
    by_age, by_cap = Removed(), Removed()
    for kept in files[:old]:
        _remove(kept, by_age)
    left = files[old:]
    cap = settings.quarantine_max_mb * 1024 * 1024
    total = sum(f.size for f in left)
    count = len(left)
    # Oldest first: the newest refusals are the ones an operator is likeliest to look into.
    for kept in left:
        if total <= cap and count <= settings.quarantine_max_files:
            break
        _remove(kept, by_cap)
        total -= kept.size
        count -= 1
    if not (by_age.files or by_cap.files):
        return Removed()
    _remove_empty_days(root.quarantine, now)
    with engine.begin() as conn:
        for reason, removed in (("retention", by_age), ("cap", by_cap)):
            if not removed.files:
                continue
            message = (
                f"quarantined files removed ({reason}): {removed.files} file(s), "
                f"{removed.bytes} bytes freed"
            )
            log.info("%s", message)
            record_event(
                conn,
                "quarantine.cleaned",
                message,
                details={"reason": reason, "files": removed.files, "bytes": removed.bytes},
            )
    return Removed(by_age.files + by_cap.files, by_age.bytes + by_cap.bytes)
