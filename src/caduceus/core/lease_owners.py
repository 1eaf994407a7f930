"""Who holds a task's lease, and whether that holder is known to be dead.

A lease owner is named `host:pid:kernel-started[:worker]`: `kernel` is the boot id and the
pid namespace the process runs in, `started` its start time in clock ticks since boot. On the
same kernel and in the same pid namespace, /proc says for certain whether that very process
still runs (a pid reused by another process has another start time). Elsewhere (another
machine, another container's pid namespace, a reboot) a pid says nothing here: the owner is
judged by its heartbeat, and counts as dead only when no running heartbeat of that host and
pid was recorded within a bound, on the database's clock (hosts' clocks may differ). A task
of a dead owner is taken over at once instead of after its lease (ten minutes by default).

Only a certain answer makes an owner dead: a /proc that refuses to say (hidepid, an owner
running as another user) or a database outage that kept everybody from beating leaves the
task to its lease.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path

from sqlalchemy import Connection, and_, select

from caduceus.core.clock import database_now
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
    try:
        started = _start_ticks(pid) or "0"
    except OSError:
        started = "0"
    return f"{socket.gethostname()}:{pid}:{_kernel()}-{started}"


@cache
def _kernel() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return "0.0"  # no /proc: nothing can be judged locally
    digits = re.sub(r"\D", "", namespace)
    return f"{boot[:16]}.{digits or 0}"


def _read_stat(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text()


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in ticks since boot; None when
    /proc has no such process. Any other error (hidepid=1 or a security module refusing another
    user's process) is raised: it says nothing about whether the process runs."""
    try:
        stat = _read_stat(pid)
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it ended while being read
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _judged_here(owner: Owner) -> bool:
    return owner.kernel == _kernel() and owner.kernel != "0.0"


def _gone(owner: Owner) -> bool:
    """Whether this process on this kernel has certainly ended."""
    try:
        started = _start_ticks(owner.pid)
    except OSError:  # /proc refuses to say: perhaps it runs
        return False
    if started is not None:
        return started != owner.started  # another process has that pid now
    # hidepid=2 hides another user's process as if it had ended; signal 0 (which sends
    # nothing) is not hidden: ESRCH when no process has the pid, EPERM for another user's.
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def dead_owners(
    conn: Connection,
    owners: Iterable[str],
    silent_after: timedelta,
    *,
    judge_remote: bool = True,
) -> list[str]:
    """Which of these lease owners are known to be dead; an owner of unknown form never is.
    Without `judge_remote` (this process has not reached the database for long enough, see
    core/db_contact), owners on other hosts are left to their leases."""
    dead: list[str] = []
    remote: dict[str, Owner] = {}
    for name in set(owners):
        owner = parse(name)
        if owner is None:
            continue
        if _judged_here(owner):
            if _gone(owner):
                dead.append(name)
        elif judge_remote:
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
                        # Written and compared on the database's clock, not the hosts'.
                        hb.c.beat_at >= database_now(conn.dialect.name, silent_after),
                    )
                )
            )
        }
        dead.extend(name for name, o in remote.items() if (o.host, o.pid) not in alive)
    return sorted(dead)
