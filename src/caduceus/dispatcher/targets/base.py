"""What every target plug-in provides."""

from __future__ import annotations

import fnmatch
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class TargetError(Exception):
    """The target cannot be reached or refused everything; the message says why, without secrets."""


@dataclass(frozen=True)
class Shipment:
    """What a plug-in may need to know about the task it sends, besides the files."""

    task_id: str
    sender_aet: str = ""
    sender_address: str = ""
    receiver_aet: str = ""
    # True once the dispatcher is stopping or lost its lease: a plug-in checks it between
    # instances and stops there, so that a stop does not wait for (or cut off) a long send.
    interrupted: Callable[[], bool] = field(default=lambda: False, compare=False)


@dataclass
class SendReport:
    """Per instance: which files the target accepted and why the others failed."""

    accepted: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)
    transcoded: list[Path] = field(default_factory=list)
    # The send stopped early on `Shipment.interrupted`: files in neither list were not sent.
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return not self.failed


class Target(Protocol):
    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        """Send the files; only files in `accepted` may be considered delivered."""
        ...

    def test(self) -> str:
        """Check that the target answers; return what was checked, or raise TargetError."""
        ...


def excluded(path: Path, patterns: Sequence[str]) -> bool:
    """Whether a target's `exclude` patterns keep this file back (mercure's file_filter)."""
    return any(fnmatch.fnmatchcase(path.name, pattern) for pattern in patterns)


def https_verification(
    verify_tls: bool, ca_file: str, reason: Callable[[BaseException], str] = str
) -> bool | ssl.SSLContext:
    """httpx's `verify` for a target: off, the system's CAs, or the configured CA file."""
    if not (verify_tls and ca_file):
        return verify_tls
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TargetError(f"cannot use the CA certificate {ca_file}: {reason(exc)}") from exc
