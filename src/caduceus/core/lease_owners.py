"""Who holds a task's lease, and whether that holder is known to be dead.

A lease owner is named `host:pid:kernel-started[:worker]`: `kernel` is the boot id and the
pid namespace the process runs in, `started` its start time in clock ticks since boot. On the
same kernel and in the same pid namespace, /proc says for certain whether that very process
still runs (a pid reused by another process has another start time). Elsewhere (another
machine, another container's pid namespace, a reboot) a pid says nothing here: the owner is
judged by its heartbeat, and counts as dead only when no running heartbeat of that host and
pid was recorded within a bound. A task of a dead owner is taken over at once instead of
after its lease (ten minutes by default).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

from sqlalchemy import Connection, and_, select

from caduceus.core.db.models import SERVICE_HEARTBEATS

_FORMAT = re.compile(
    r"^(?P<host>[^:]+):(?P<pid>\d{1,10}):(?P<kernel>[0-9a-f]{1,32}\.\d{1,20})-(?P<started>\d{1,20})"
    r"(?::\d{1,5})?$"
)


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    kernel: str
    started: str


def parse(owner: str) -> Owner | None:
    """The parts of an owner name; None for another form (an older release's `host:pid`, a
    one-off dispatch from the command line): such a lease is left to expire."""
    found = _FORMAT.match(owner)
    if found is None:
        return None
    return Owner(found["host"], int(found["pid"]), found["kernel"], found["started"])


def this_process() -> str:
    """The owner name of the calling process (one per process; a worker thread appends its
    number)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_kernel()}-{_start_ticks(pid) or 0}"


@cache
def _kernel() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return "0.0"  # no /proc: nothing can be judged locally
    digits = re.sub(r"\D", "", namespace)
    return f"{boot[:16]}.{digits or 0}"


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in ticks since boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _judged_here(owner: Owner) -> bool:
    return owner.kernel == _kernel() and owner.kernel != "0.0"


def dead_owners(
    conn: Connection, owners: Iterable[str], now: datetime, silent_after: timedelta
) -> list[str]:
    """Which of these lease owners are known to be dead; an owner of unknown form never is."""
    dead: list[str] = []
    remote: dict[str, Owner] = {}
    for name in set(owners):
        owner = parse(name)
        if owner is None:
            continue
        if _judged_here(owner):
            if _start_ticks(owner.pid) != owner.started:
                dead.append(name)
        else:
            remote[name] = owner
    if remote:
        hb = SERVICE_HEARTBEATS
        alive = {
            (row.host, row.pid)
            for row in conn.execute(
                select(hb.c.host, hb.c.pid).where(
                    and_(
                        hb.c.host.in_({o.host for o in remote.values()}),
                        hb.c.state == "running",
                        hb.c.beat_at >= now - silent_after,
                    )
                )
            )
        }
        dead.extend(name for name, o in remote.items() if (o.host, o.pid) not in alive)
    return sorted(dead)
