"""The levels a group is completed at (series, study, patient) as data.

Completing a group takes the same steps at every level (claim, load, check it still
receives, build and route the group, close it): those are written once, in
`Router._complete`. What differs between the levels is here: a `Level` names its table,
columns, setting and route; `Opened` is the group while it completes, and `Opened.close`
the guarded step that marks it done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, Table, and_, update

from caduceus.core.config.models import Config, Settings


@dataclass(frozen=True)
class Level:
    """What differs between completing a series, a study and a patient."""

    name: str  # "series", "study" or "patient": the claim's and the events' prefix
    table: Table
    key: Column[Any]  # what the router claims, loads and sets a group aside by
    uid: Column[Any]  # what PassResult.completed names a completed group by
    # The last arrival: the quiet time counts from it, and closing is guarded by it.
    arrival: Column[Any]
    quiet: Callable[[Settings], int]  # the setting with the quiet time, in seconds
    # The events' reference to the group; None for a patient, whose ID is PHI: events leave
    # it out and logs mask it.
    ref: str | None
    # The log field naming the group while it completes, if any.
    logged_as: str | None
    # A Router method that builds the level's group from the opened row, routes it, and
    # closes it (Opened.close) at the point the level needs; False: the group stays open.
    route: Callable[[Any, Opened], bool]

    def refs(self, key: Any) -> dict[str, Any]:
        return {self.ref: key} if self.ref else {}

    def log_fields(self, key: Any) -> dict[str, Any]:
        return {self.logged_as: key} if self.logged_as else {}


@dataclass
class Opened:
    """A group being completed, inside its transaction and under its claim: what a level's
    route works with, and the tasks it made."""

    level: Level
    conn: Connection
    config: Config
    row: Any  # the group's row, as read under the claim
    since: datetime | None  # the last completion's watermark: instances up to it were routed
    generation: int  # this completion's number: 1 the first time, more when the group reopened
    now: datetime
    forced: bool  # a study completed by its force-complete timer or an operator
    tasks: list[str] = field(default_factory=list)

    def close(self, state: str, completed_at: Any, undo: bool = True) -> bool:
        """Mark the group routed, guarded by the arrival time it was read with: if an instance
        arrived meanwhile nothing changes, the transaction's work so far (the tasks made) is
        undone unless `undo` is False, and False says to leave the group to a later pass.

        `completed_at` is the watermark: the receiver's arrival time, not our clock, so that
        instances that arrive later belong to the next group even if the clocks disagree.
        """
        level, row = self.level, self.row._mapping
        changed = self.conn.execute(
            update(level.table)
            .where(and_(level.key == row[level.key], level.arrival == row[level.arrival]))
            .values(state=state, completed_at=completed_at, generation=self.generation)
        ).rowcount
        if not changed and undo:
            self.conn.rollback()
        return bool(changed)


__all__ = ["Level", "Opened"]
