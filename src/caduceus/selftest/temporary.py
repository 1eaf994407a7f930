"""The self-test's temporary rule and folder target, added to and removed from the
configuration like any other change: a new version each time, with "self-test" as author.

Both are changed on the newest stored version in one transaction, so whatever an
administrator saved in between stays; removal takes away exactly these two names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from caduceus.core.config import store
from caduceus.core.config.models import Config

AUTHOR = "self-test"
# A series is complete after this many seconds without a new instance (the least allowed):
# the self-test should not wait the installation's usual quiet time.
QUIET_SECONDS = 1


@dataclass(frozen=True)
class Temporary:
    run_id: str
    folder: Path  # the folder target writes here

    @property
    def name(self) -> str:
        """The rule's and the target's name."""
        return f"selftest-{self.run_id}"

    @property
    def marker(self) -> str:
        """The PatientID of the generated series: only this run's series carries it."""
        return f"CADUCEUS-SELFTEST-{self.run_id}"

    @property
    def expression(self) -> str:
        return f"@PatientID@ == '{self.marker}'"


def add(engine: Engine, temporary: Temporary) -> int:
    """Add the rule and the target; returns the new configuration version."""

    def change(previous: Config | None) -> Config:
        document = store.content_of(previous or Config())
        if temporary.name in document["rules"] or temporary.name in document["targets"]:
            raise ValueError(f"the name {temporary.name} is taken")
        document["targets"][temporary.name] = {
            "type": "folder",
            "path": str(temporary.folder),
            "comment": "temporary: self-test",
        }
        document["rules"][temporary.name] = {
            "rule": temporary.expression,
            "action": "route",
            "targets": [temporary.name],
            "series_complete_trigger": QUIET_SECONDS,
            "comment": "temporary: self-test",
        }
        return Config.model_validate(document)

    version, _ = store.edit(engine, change, AUTHOR, f"self-test {temporary.run_id}: added")
    return version


def remove(engine: Engine, temporary: Temporary) -> bool:
    """Take the rule and the target out again; False when neither was there any more."""

    def change(previous: Config | None) -> Config:
        document = store.content_of(previous or Config())
        document["rules"].pop(temporary.name, None)
        document["targets"].pop(temporary.name, None)
        return Config.model_validate(document)

    _, changed = store.edit(engine, change, AUTHOR, f"self-test {temporary.run_id}: removed")
    return changed
