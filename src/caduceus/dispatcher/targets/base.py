"""What every target plug-in provides."""

from __future__ import annotations

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


@dataclass
class SendReport:
    """Per instance: which files the target accepted and why the others failed."""

    accepted: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)
    transcoded: list[Path] = field(default_factory=list)

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
