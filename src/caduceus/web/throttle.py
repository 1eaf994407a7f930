"""Counting failed logins and password checks, to slow down guessing without locking anyone out.

Failures are counted per client address across every user name (a flood of throwaway names
from one address is stopped there), and per user name from anywhere. A user name under attack
from many addresses is closed only to the addresses that are themselves failing: an attacker
cannot keep `admin` out of an address that types the right password.

Memory is bounded: each counter keeps at most its limit of failure times, and the table
forgets the keys that failed least recently beyond `max_keys`. IPv6 addresses count per /64,
the block one subscriber gets, so walking through one's own addresses gains nothing.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque


def address_key(host: str) -> str:
    """The key an address counts under: itself for IPv4, its /64 for IPv6."""
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class Failures:
    """Times of recent failures per key, within `window` seconds, in at most `max_keys` keys.

    Not thread-safe on its own: the throttles hold one lock over a check and its count."""

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.keys: OrderedDict[str, deque[float]] = OrderedDict()

    def recent(self, key: str, now: float) -> int:
        times = self.keys.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.keys[key]
            return 0
        return len(times)

    def blocked_for(self, key: str, now: float, pending: int = 0) -> float:
        """Seconds until `key` may try again; 0 when it may now. `pending` attempts still
        being checked count as failures until they are known."""
        recent = self.recent(key, now)
        if recent + pending < self.limit:
            return 0.0
        if recent < self.limit:
            return 1.0  # the checks in progress decide
        return max(self.keys[key][0] + self.window - now, 0.001)

    def add(self, key: str, now: float) -> None:
        # No more than `limit` times are kept: more would block no longer and cost memory.
        times = self.keys.setdefault(key, deque(maxlen=self.limit))
        times.append(now)
        self.keys.move_to_end(key)
        while len(self.keys) > self.max_keys:
            self.keys.popitem(last=False)

    def forget_one(self, key: str) -> None:
        """An attempt counted up front turned out to be no failure."""
        times = self.keys.get(key)
        if times:
            times.pop()
            if not times:
                del self.keys[key]


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header for a wait of this many seconds (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class LoginThrottle:
    """Failed logins: at most `per_address` per address (any user names) and `per_name` per
    user name from anywhere within `window` seconds; beyond `per_name`, a name stays open to
    addresses with no recent failure. An attempt is checked and counted as failed under one
    lock, before the password is checked, so a burst of parallel tries gets no more than a
    sequence; a success takes the address's count back. Against the name, an attempt is only
    pending until it has failed: the name's counter keeps only its last `per_name` failures,
    and a success taking one back from a name at its limit would give the failing addresses
    another guess. At most `in_flight` logins per address are checked at once: a burst from
    one address never fills the password workers' queue ahead of everyone else."""

    def __init__(
        self,
        per_address: int = 10,
        per_name: int = 20,
        window: float = 300.0,
        max_keys: int = 100_000,
        in_flight: int = 2,
    ) -> None:
        self.addresses = Failures(per_address, window, max_keys)
        self.names = Failures(per_name, window, max_keys)
        self.in_flight = in_flight
        self.running: dict[str, int] = {}  # never more keys than logins being checked
        self.pending: dict[str, int] = {}  # per name, likewise
        self.lock = threading.Lock()

    def attempt(self, address: str, username: str) -> float:
        """0 when a login may be tried now (and counts it), else the seconds to wait. Each
        0 must be followed by `finished`."""
        where, name = address_key(address), username.lower()
        now = time.monotonic()
        with self.lock:
            wait = self.addresses.blocked_for(where, now)
            if not wait and self.addresses.recent(where, now):
                # Only an address that is failing itself is kept out of a name under attack.
                wait = self.names.blocked_for(name, now, self.pending.get(name, 0))
            if not wait and self.running.get(where, 0) >= self.in_flight:
                wait = 1.0
            if wait:
                return wait
            self.addresses.add(where, now)
            self.pending[name] = self.pending.get(name, 0) + 1
            self.running[where] = self.running.get(where, 0) + 1
            return 0.0

    def finished(self, address: str, username: str, failed: bool) -> None:
        """The attempt is over. A failure counts against the name; otherwise (a success, or a
        try that never ran) the failure counted up front against the address is taken back."""
        where, name = address_key(address), username.lower()
        with self.lock:
            _release(self.running, where)
            _release(self.pending, name)
            if failed:
                self.names.add(name, time.monotonic())
            else:
                self.addresses.forget_one(where)


def _release(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 1) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class PasswordCheckThrottle:
    """Wrong current passwords on a password change, per user: a stolen session must not
    become a way to guess the password itself."""

    def __init__(self, limit: int = 5, window: float = 300.0, max_keys: int = 100_000) -> None:
        self.failures = Failures(limit, window, max_keys)
        self.lock = threading.Lock()

    def attempt(self, user_id: int) -> float:
        now = time.monotonic()
        with self.lock:
            wait = self.failures.blocked_for(str(user_id), now)
            if not wait:
                self.failures.add(str(user_id), now)
            return wait

    def not_failed(self, user_id: int) -> None:
        with self.lock:
            self.failures.forget_one(str(user_id))
