"""What others may ask of the router; the only router module the web, the CLI and the
self-test import.

An operator's forced completion, a module's test task, and which rules a series' tags match.
Everything else the router does it does by itself, reading arrivals from the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Column, Connection, Engine, update

from caduceus.core.config.models import Config, Rule
from caduceus.core.db.models import SERIES, STUDIES
from caduceus.core.dicom.header import Header
from caduceus.core.rules import Budget
from caduceus.core.states import SeriesState
from caduceus.core.storage import DataRoot
from caduceus.router.completion import PassResult, Router
from caduceus.router.rules import Matches, match
from caduceus.router.taskmaker import Group, NoSpace, make_task

__all__ = [
    "Matches",
    "NoSpace",
    "PassResult",
    "force_complete",
    "make_trial_task",
    "matching_rules",
]


def force_complete(
    engine: Engine,
    root: DataRoot,
    budget: Budget,
    config: Config,
    level: Literal["series", "study"],
    key: int,
) -> PassResult:
    """Complete a series or study (by its row id) now, as an operator asks, instead of after
    its quiet time or its study timer; its rules run at once and their tasks are made.

    The caller checks that it is still receiving. Raises NoSpace when the data root is full:
    nothing of the group is committed then, so it stays receiving and can be completed later.
    """
    router = Router(engine, root, budget)
    if level == "study":
        return router.force_complete_study(config, key)
    return router.force_complete_series(config, key)


def _complete(conn: Connection, uid_column: Column[str], uid: str) -> int:
    """Mark a series or study complete (as a completion would); returns its id."""
    table = uid_column.table
    done = conn.execute(
        update(table)
        .where(uid_column == uid)
        .values(state=SeriesState.COMPLETE, generation=1, completed_at=datetime.now(UTC))
        .returning(table.c.id)
    ).scalar_one()
    return int(done)


def make_trial_task(
    conn: Connection,
    root: DataRoot,
    config: Config,
    *,
    module: str,
    rule_name: str,
    instances: list[tuple[int, str]],
    header: Header,
    sender: str,
) -> str:
    """Make the task of a module's test run on a series just stored, in the caller's
    transaction; returns the task's id.

    The series and its study are marked complete here, so the router never completes them
    itself and never applies the real rules to them. The task is made as the router makes
    every task (its folder under tasks/, task.json, its rows and history), for a rule named
    `rule_name` that exists only in a private copy of `config`: it runs `module` alone, at
    urgent priority, and sends nothing anywhere. `instances` are (instance id, path under the
    data root); `header` is one instance's; `sender` is shown as the series' sender address.
    """
    # make_task reads the rule from the configuration: a private copy gets one that runs
    # just this module; the stored configuration is not changed.
    trial = config.model_copy(deep=True)
    trial.rules[rule_name] = Rule(
        rule="False", action="process", modules=[module], priority="urgent"
    )
    series_id = _complete(conn, SERIES.c.series_uid, header.series_uid)
    study_id = _complete(conn, STUDIES.c.study_uid, header.study_uid)
    group = Group(
        level="series",
        uid=header.series_uid,
        generation=1,
        instances=instances,
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        patient_id=header.patient_id,
        series_id=series_id,
        study_id=study_id,
        info={"patient_name": header.patient_name, "sender_address": sender},
    )
    return make_task(conn, root, trial, group, rule_name, [], [rule_name])


def matching_rules(config: Config, tags: Mapping[str, Any], budget: Budget) -> Matches:
    """The enabled rules whose condition the tags of one series satisfy, by trigger level
    (fallback rules only when no other rule matches), with the evaluation errors by rule."""
    return match(config, tags, budget)
