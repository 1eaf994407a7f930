"""One router pass: find the series, studies and patients that are complete, make their tasks.

The pass asks the database, not the file system: open groups are found through an index on
(state, last arrival), so its cost grows with the number of groups still receiving, not with
the number of files or of past series. Each group is handled in its own transaction, guarded
by the last arrival time it saw: if an instance arrived meanwhile, nothing is committed and the
group is looked at again later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select, update

from caduceus.core.clock import as_utc
from caduceus.core.config.models import Config, parse_series_condition, series_condition_met
from caduceus.core.db.models import (
    ASSOCIATIONS,
    INSTANCES,
    PATIENT_GROUPS,
    SERIES,
    STUDIES,
)
from caduceus.core.db.upsert import insert_or_update
from caduceus.core.dicom.series_tags import UnreadableSeries, series_tags, stored_tags
from caduceus.core.events import record_event
from caduceus.core.logs import log_context, phi
from caduceus.core.rules import Budget
from caduceus.core.rules.tagnames import SENDER_TAGS
from caduceus.core.states import SeriesState
from caduceus.core.storage import DataRoot
from caduceus.router.exclusive import claim_group
from caduceus.router.levels import Level, Opened
from caduceus.router.rules import discarding_rule, match, matches_any
from caduceus.router.taskmaker import Group, MissingFile, NoSpace, make_task
from caduceus.router.tuning import BATCH, NO_SPACE_RETRY

log = logging.getLogger("caduceus.router")


@dataclass
class PassResult:
    """What one pass (or one force-complete) did, for the service's log, the operator's
    force-complete and the tests: the tasks it made, the groups it completed, and when the
    next group falls due, which tells the service how long it may sleep."""

    tasks: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)  # "series:UID", "study:UID", ...
    next_due: datetime | None = None


class Router:
    """Owns the completion of received groups: when a series, a study or a patient counts as
    complete, which rules match it, and the tasks that follow. Only the receiver also writes
    a group's state: an arrival sets it receiving again; complete and error are set here.

    It keeps no state between passes that the database does not hold (a cache of tags for
    quiet-time overrides, and whether the disk was full, aside), so several routers can
    share a database: each group is claimed (router/exclusive.py) and closed in one
    transaction guarded by its last arrival. A group that cannot be routed (its files went
    missing) is set aside in error, so it blocks no other.
    """

    def __init__(self, engine: Engine, root: DataRoot, budget: Budget | None = None):
        self.engine = engine
        self.root = root
        self.budget = budget or Budget()  # per evaluation of a rule
        self._trigger_tags: dict[int, dict[str, Any]] = {}
        self._no_space = False  # the last pass stopped on a full data root

    def run_pass(self, config: Config, now: datetime | None = None) -> PassResult:
        now = now or datetime.now(UTC)
        result = PassResult()
        try:
            self._series(config, now, result)
            self._studies(config, now, result)
            self._patients(config, now, result)
        except NoSpace as exc:
            self._out_of_space(exc)
            result.next_due = min(filter(None, (result.next_due, now + NO_SPACE_RETRY)))
            return result
        if self._no_space:
            self._no_space = False
            log.info("the data root has room again: tasks are made again")
        return result

    def _out_of_space(self, exc: NoSpace) -> None:
        """The group stays untouched and is tried again; said once, not on every retry."""
        if self._no_space:
            log.debug("%s", exc)
            return
        self._no_space = True
        log.warning("%s; the pass stops and is tried again until there is room", exc)
        try:
            with self.engine.begin() as conn:
                record_event(conn, "router.no_space", str(exc), severity="warning")
        except Exception as db_exc:  # the database may be on the same full disk
            log.warning("could not record the full data root: %s", db_exc)

    def _set_aside(self, level: Level, key: Any, exc: Exception) -> None:
        """Set a group that cannot be routed aside, visibly, so it blocks no other group."""
        log.error("%s.error %s: %s", level.name, phi(key) if level.ref is None else key, exc)
        with self.engine.begin() as conn:
            conn.execute(
                update(level.table).where(level.key == key).values(state=SeriesState.ERROR)
            )
            record_event(conn, f"{level.name}.error", str(exc), severity="error", **level.refs(key))

    def force_complete_study(
        self, config: Config, study_id: int, now: datetime | None = None
    ) -> PassResult:
        """Complete a study now, as its force-complete timer would (an operator's action)."""
        result = PassResult()
        self._complete(STUDY_LEVEL, config, study_id, now or datetime.now(UTC), result, forced=True)
        return result

    def force_complete_series(
        self, config: Config, series_id: int, now: datetime | None = None
    ) -> PassResult:
        """Complete a series now instead of after its quiet time (an operator's action: the
        modality is known to be done). A series whose files went missing is set aside."""
        result = PassResult()
        self._finish_series(config, series_id, now or datetime.now(UTC), result)
        return result

    # -- the steps every level shares -----------------------------------------------------

    def _open(self, level: Level, *more: Any) -> list[Any]:
        """Groups still receiving, the longest quiet first (an index on state and arrival).

        Each row has the group's `key`, its `last` arrival, and the `more` columns asked for.
        """
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(level.key.label("key"), level.arrival.label("last"), *more)
                    .where(level.table.c.state == SeriesState.RECEIVING)
                    .order_by(level.arrival)
                    .limit(BATCH)
                ).all()
            )

    def _complete(
        self,
        level: Level,
        config: Config,
        key: Any,
        now: datetime,
        result: PassResult,
        forced: bool = False,
    ) -> None:
        """Complete one group: claim it, load it, check it still receives, and let its level
        build the group, route it and close it, all in one transaction. A group the level
        leaves open (an instance arrived meanwhile, a patient's study still receives) is
        looked at again by a later pass."""
        with log_context(**level.log_fields(key)), self.engine.begin() as conn:
            if not claim_group(conn, f"{level.name}:{key}"):
                return  # another router is completing it
            row = conn.execute(select(level.table).where(level.key == key)).one()
            if row.state != SeriesState.RECEIVING:
                return
            opened = Opened(
                level=level,
                conn=conn,
                config=config,
                row=row,
                since=as_utc(row.completed_at) if row.completed_at else None,
                generation=row.generation + 1,
                now=now,
                forced=forced,
            )
            completed = level.route(self, opened)
            # Listed even if the close undid them: a later pass makes them again, same ids.
            result.tasks += opened.tasks
            if not completed:
                return
        result.completed.append(f"{level.name}:{row._mapping[level.uid]}")

    def _complete_or_set_aside(
        self,
        level: Level,
        config: Config,
        key: Any,
        now: datetime,
        result: PassResult,
        forced: bool = False,
    ) -> None:
        """Complete a group that is due; one whose files went missing is set aside."""
        try:
            self._complete(level, config, key, now, result, forced=forced)
        except MissingFile as exc:
            self._set_aside(level, key, exc)

    def _group_instances(
        self, conn: Connection, column: Any, value: Any, since: datetime | None
    ) -> list[tuple[int, str]]:
        query = select(INSTANCES.c.id, INSTANCES.c.path).where(column == value)
        if since is not None:
            query = query.where(INSTANCES.c.received_at > since)
        return [(r.id, r.path) for r in conn.execute(query.order_by(INSTANCES.c.id))]

    def _collect(
        self, conn: Connection, config: Config, series_ids: list[int], since: datetime | None
    ) -> tuple[list[tuple[int, str]], list[dict[str, Any]], set[int]]:
        """The new instances of several series, the tags of each series' newest one, and the
        series that a discard rule discarded: those are left out (as in mercure, they never
        join their study, nor count as its received series)."""
        instances: list[tuple[int, str]] = []
        tags_per_series: list[dict[str, Any]] = []
        discarded: set[int] = set()
        for series_id in series_ids:
            found = self._group_instances(conn, INSTANCES.c.series_id, series_id, since)
            if not found:
                continue
            try:
                tags = self._with_sender(
                    stored_tags(self.root, found[-1][1]), self._sender(conn, found[-1][0])
                )
                if discarding_rule(config, tags, self.budget, {}) is not None:
                    discarded.add(series_id)
                    continue
                tags_per_series.append(tags)
                instances += found
            except UnreadableSeries as exc:
                instances += found
                record_event(
                    conn,
                    "series.error",
                    f"tags cannot be read: {exc}",
                    severity="error",
                    series_id=series_id,
                )
        return instances, tags_per_series, discarded

    @staticmethod
    def _sender(conn: Connection, instance_id: int) -> dict[str, str]:
        """Who sent the instance, from where, and which AE title it called ('' if unknown)."""
        sender = conn.execute(
            select(ASSOCIATIONS.c.calling_aet, ASSOCIATIONS.c.called_aet, ASSOCIATIONS.c.peer_host)
            .join(INSTANCES, INSTANCES.c.association_id == ASSOCIATIONS.c.id)
            .where(INSTANCES.c.id == instance_id)
        ).first()
        return {
            "sender_aet": sender.calling_aet if sender else "",
            "sender_address": sender.peer_host if sender else "",
            "receiver_aet": sender.called_aet if sender else "",
        }

    @staticmethod
    def _with_sender(tags: dict[str, Any], sender: Mapping[str, Any]) -> dict[str, Any]:
        """The tags with what mercure's receiver adds to them (rules route by sender:
        @SenderAET@ == 'CT1'), from a sender as _sender() or a task's info gives it."""
        values = (sender["sender_aet"], sender["sender_address"], sender["receiver_aet"])
        return {**tags, **dict(zip(SENDER_TAGS, values, strict=True))}

    def _info(self, conn: Connection, study_id: int, instance_id: int) -> dict[str, Any]:
        study = conn.execute(select(STUDIES).where(STUDIES.c.id == study_id)).one()
        return {
            "patient_name": study.patient_name,
            "accession_number": study.accession_number,
            **self._sender(conn, instance_id),
        }

    def _tasks(
        self,
        conn: Connection,
        config: Config,
        group: Group,
        names: list[str],
        triggered: list[str],
        now: datetime,
    ) -> list[str]:
        """One task per rule; a target that an earlier route-only rule covers is sent to once."""
        made: list[str] = []
        covered: dict[str, str] = {}
        for name in names:
            rule = config.rules[name]
            targets = list(rule.targets)
            if rule.action == "route":
                targets = [t for t in targets if t not in covered]
                for t in rule.targets:
                    covered.setdefault(t, name)
                if not targets:
                    record_event(
                        conn,
                        "rule.skipped",
                        f"rule {name!r}: every target is already served by "
                        f"{', '.join(sorted({covered[t] for t in rule.targets}))}",
                        series_id=None,
                        details={"group": group.key(name)},
                    )
                    continue
            made.append(make_task(conn, self.root, config, group, name, targets, triggered, now))
        return made

    @staticmethod
    def _level_rules(config: Config, trigger: str) -> list[str]:
        """The enabled rules that wait for a study or a patient, in the configuration's order."""
        return [n for n, r in config.rules.items() if r.trigger == trigger and not r.disabled]

    # -- series ---------------------------------------------------------------------------

    def _series_trigger(self, config: Config) -> int:
        overrides = [
            r.series_complete_trigger
            for r in config.rules.values()
            if r.series_complete_trigger and not r.disabled
        ]
        return min([SERIES_LEVEL.quiet(config.settings), *overrides])

    def _own_trigger(self, config: Config, series_id: int) -> int:
        """The quiet time for this series: a matching rule's override, else the setting.

        Only asked for series already past the shortest trigger of all, and the tags are read
        once per series, so rules with overrides cost little on a busy system.
        """
        tags = self._trigger_tags.get(series_id)
        if tags is None:
            try:
                tags = series_tags(self.engine, self.root, series_id=series_id) or {}
            except UnreadableSeries:
                tags = {}  # completion will record the error
            if len(self._trigger_tags) > 10_000:
                self._trigger_tags.clear()
            self._trigger_tags[series_id] = tags
        overrides = [
            trigger
            # A rule without an answer here is reported when the series completes.
            for names in match(config, tags, self.budget).by_level.values()
            for name in names
            if (trigger := config.rules[name].series_complete_trigger) is not None
        ]
        return min(overrides) if overrides else SERIES_LEVEL.quiet(config.settings)

    def _series(self, config: Config, now: datetime, result: PassResult) -> None:
        shortest = self._series_trigger(config)
        overrides = shortest != SERIES_LEVEL.quiet(config.settings) or any(
            r.series_complete_trigger for r in config.rules.values()
        )
        for row in self._open(SERIES_LEVEL):
            last = as_utc(row.last)
            if last + timedelta(seconds=shortest) > now:
                due = last + timedelta(seconds=shortest)
                result.next_due = min(filter(None, (result.next_due, due)))
                break
            if overrides:
                own = last + timedelta(seconds=self._own_trigger(config, row.key))
                if own > now:
                    result.next_due = min(filter(None, (result.next_due, own)))
                    continue
            self._finish_series(config, row.key, now, result)

    def _finish_series(
        self, config: Config, series_id: int, now: datetime, result: PassResult
    ) -> None:
        """Complete a series that is due; one whose files went missing is set aside."""
        self._trigger_tags.pop(series_id, None)
        self._complete_or_set_aside(SERIES_LEVEL, config, series_id, now, result)

    def _series_group(self, opened: Opened) -> bool:
        """The series' new instances as one group, routed by the rules that match its tags.

        The series is closed after its tasks are made: a row lock taken earlier would keep
        the receiver waiting to record the next arrival for it.
        """
        conn, series = opened.conn, opened.row
        instances = self._group_instances(conn, INSTANCES.c.series_id, series.id, opened.since)
        study = conn.execute(select(STUDIES).where(STUDIES.c.id == series.study_id)).one()
        group = Group(
            level="series",
            uid=series.series_uid,
            generation=opened.generation,
            instances=instances,
            study_uid=study.study_uid,
            series_uid=series.series_uid,
            patient_id=study.patient_id,
            series_id=series.id,
            study_id=study.id,
        )
        state = SeriesState.COMPLETE
        if not instances:
            record_event(conn, "series.complete", "no new instances", series_id=series.id)
        else:
            group.info = self._info(conn, study.id, instances[-1][0])
            try:
                # The sender is in the task's info already: not asked for a second time.
                tags = self._with_sender(stored_tags(self.root, instances[-1][1]), group.info)
            except UnreadableSeries as exc:
                state = SeriesState.ERROR
                record_event(
                    conn,
                    "series.error",
                    f"tags cannot be read: {exc}",
                    severity="error",
                    series_id=series.id,
                    details={"generation": opened.generation},
                )
                tags = None
            if tags is not None:
                if series.generation > 0:
                    record_event(
                        conn,
                        "series.reopened",
                        f"{len(instances)} instance(s) arrived after the series was routed; "
                        f"handled as group {opened.generation}",
                        severity="warning",
                        series_id=series.id,
                    )
                opened.tasks += self._route_series(
                    conn, opened.config, group, tags, series.id, opened.now
                )
        return opened.close(state, series.last_received_at)

    def _route_series(
        self,
        conn: Connection,
        config: Config,
        group: Group,
        tags: dict[str, Any],
        series_id: int,
        now: datetime,
    ) -> list[str]:
        matches = match(config, tags, self.budget)
        rule_errors(conn, matches.errors, "series", series_id=series_id)
        if not matches.any:
            unanswered = f" ({', '.join(map(repr, matches.errors))} could not be evaluated)"
            record_event(
                conn,
                "series.discarded",
                "no rule matched" + (unanswered if matches.errors else ""),
                series_id=series_id,
                details={"generation": group.generation, "instances": len(group.instances)},
            )
            return []
        if matches.discarded_by is not None:
            rule = matches.discarded_by
            record_event(
                conn,
                "series.discarded",
                f"discarded by rule {rule!r}"
                + (" (fallback)" if matches.fallback else "; no other rule is applied"),
                series_id=series_id,
                details={"generation": group.generation, "rule": rule},
            )
            return self._tasks(conn, config, group, [rule], [rule], now)
        later = matches.by_level["study"] + matches.by_level["patient"]
        triggered = [name for names in matches.by_level.values() for name in names]
        record_event(
            conn,
            "series.complete",
            f"rules matched: {', '.join(triggered)}" + (" (fallback)" if matches.fallback else ""),
            series_id=series_id,
            details={
                "generation": group.generation,
                "rules": triggered,
                "waiting_for_study": later,
            },
        )
        return self._tasks(conn, config, group, matches.by_level["series"], triggered, now)

    # -- studies --------------------------------------------------------------------------

    def _studies(self, config: Config, now: datetime, result: PassResult) -> None:
        settings = config.settings
        quiet = timedelta(seconds=STUDY_LEVEL.quiet(settings))
        force = timedelta(seconds=settings.study_forcecomplete_trigger)
        waiting_rules = [
            n
            for n in self._level_rules(config, "study")
            if config.rules[n].study_trigger_condition == "received_series"
        ]
        for row in self._open(STUDY_LEVEL, STUDIES.c.first_received_at):
            last = as_utc(row.last)
            ready = last + quiet <= now or (
                waiting_rules and self._required_series_present(config, row.key)
            )
            forced = not ready and as_utc(row.first_received_at) + force <= now
            if ready or forced:
                self._complete_or_set_aside(
                    STUDY_LEVEL, config, row.key, now, result, forced=forced
                )
            else:
                due = last + quiet
                result.next_due = min(filter(None, (result.next_due, due)))

    def _required_series_present(self, config: Config, study_id: int) -> bool:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(SERIES.c.series_description, SERIES.c.state).where(
                    SERIES.c.study_id == study_id
                )
            ).all()
        if any(r.state == SeriesState.RECEIVING for r in rows):
            return False
        descriptions = [r.series_description for r in rows]
        return all(
            series_condition_met(
                parse_series_condition(config.rules[n].required_series), descriptions
            )
            for n in self._level_rules(config, "study")
            if config.rules[n].study_trigger_condition == "received_series"
        )

    def _study_group(self, opened: Opened) -> bool:
        """The new instances of all the study's series as one group, routed by the study rules
        that match any series. Closing the study opens (or reopens) its patient's group."""
        conn, config, study = opened.conn, opened.config, opened.row
        series_rows = conn.execute(
            select(SERIES.c.id, SERIES.c.series_description).where(SERIES.c.study_id == study.id)
        ).all()
        instances, tags_per_series, discarded = self._collect(
            conn, config, [r.id for r in series_rows], opened.since
        )
        group = Group(
            level="study",
            uid=study.study_uid,
            generation=opened.generation,
            instances=instances,
            study_uid=study.study_uid,
            patient_id=study.patient_id,
            study_id=study.id,
        )
        descriptions = [s.series_description for s in series_rows if s.id not in discarded]
        errors: dict[str, str] = {}
        matched = self._study_matches(opened, tags_per_series, descriptions, errors)
        if instances:
            group.info = self._info(conn, study.id, instances[-1][0])
            group.study = {
                "study_uid": study.study_uid,
                "complete_trigger": "force" if opened.forced else "timeout",
                "complete_required_series": ", ".join(
                    config.rules[n].required_series
                    for n in matched
                    if config.rules[n].required_series
                ),
                "creation_time": as_utc(study.first_received_at).isoformat(),
                "last_receive_time": as_utc(study.last_received_at).isoformat(),
                "received_series": descriptions,
                "complete_force": opened.forced,
            }
            opened.tasks += self._tasks(conn, config, group, matched, matched, opened.now)
        rule_errors(conn, errors, "study", study_id=study.id)
        record_event(
            conn,
            "study.complete",
            ("forced after timeout; " if opened.forced else "")
            + (f"rules: {', '.join(matched)}" if matched else "no study rule"),
            study_id=study.id,
            details={"generation": opened.generation, "instances": len(instances)},
        )
        if not opened.close(SeriesState.COMPLETE, study.last_received_at):
            return False
        if study.patient_id:
            conn.execute(
                insert_or_update(
                    conn.dialect.name,
                    PATIENT_GROUPS,
                    {
                        "patient_id": study.patient_id,
                        "state": SeriesState.RECEIVING,
                        "last_activity": opened.now,
                        "generation": 0,
                    },
                    "patient_id",
                    ["state", "last_activity"],
                    returning=None,
                )
            )
        return True

    def _study_matches(
        self,
        opened: Opened,
        tags_per_series: list[dict[str, Any]],
        descriptions: list[str],
        errors: dict[str, str],
    ) -> list[str]:
        """The study rules that apply: they match a series, and the series they require were
        received (or the study was forced and the setting says to proceed without them)."""
        config, study_id = opened.config, opened.row.id
        matched = []
        for name in self._level_rules(config, "study"):
            rule = config.rules[name]
            if not matches_any(config, name, tags_per_series, self.budget, errors):
                continue
            if rule.study_trigger_condition == "received_series" and not series_condition_met(
                parse_series_condition(rule.required_series), descriptions
            ):
                action = (
                    rule.study_force_completion_action or config.settings.study_forcecomplete_action
                )
                if not opened.forced or action != "proceed":
                    record_event(
                        opened.conn,
                        "study.incomplete",
                        f"rule {name!r}: required series {rule.required_series} not received; "
                        + ("study discarded" if action == "discard" else "rule not applied"),
                        severity="warning",
                        study_id=study_id,
                    )
                    continue
            matched.append(name)
        return matched

    # -- patients -------------------------------------------------------------------------

    def _patients(self, config: Config, now: datetime, result: PassResult) -> None:
        quiet = timedelta(seconds=PATIENT_LEVEL.quiet(config.settings))
        for row in self._open(PATIENT_LEVEL):
            due = as_utc(row.last) + quiet
            if due > now:
                result.next_due = min(filter(None, (result.next_due, due)))
                break
            self._complete_or_set_aside(PATIENT_LEVEL, config, row.key, now, result)

    def _patient_group(self, opened: Opened) -> bool:
        """All new instances of the patient's studies as one group, routed by the patient
        rules that match any series. A study of the patient still receiving keeps it open."""
        conn, config, patient_id = opened.conn, opened.config, opened.row.patient_id
        if conn.execute(
            select(STUDIES.c.id)
            .where(
                and_(STUDIES.c.patient_id == patient_id, STUDIES.c.state == SeriesState.RECEIVING)
            )
            .limit(1)
        ).first():
            return False
        series_ids = (
            conn.execute(
                select(SERIES.c.id)
                .join(STUDIES, STUDIES.c.id == SERIES.c.study_id)
                .where(STUDIES.c.patient_id == patient_id)
            )
            .scalars()
            .all()
        )
        instances, tags_per_series, _ = self._collect(conn, config, list(series_ids), opened.since)
        watermark = conn.execute(
            select(func.max(STUDIES.c.last_received_at)).where(STUDIES.c.patient_id == patient_id)
        ).scalar()
        errors: dict[str, str] = {}
        matched = [
            n
            for n in self._level_rules(config, "patient")
            if matches_any(config, n, tags_per_series, self.budget, errors)
        ]
        # Closed first, and the task folders made only then: if a study of the patient
        # completed meanwhile (another router), this generation's key must not get a task
        # without that study's images, nor leave task folders on disk behind it.
        # Nothing to undo if it stays open: no task is made yet, and the events of series
        # whose tags cannot be read are kept.
        if not opened.close(SeriesState.COMPLETE, watermark, undo=False):
            return False
        rule_errors(conn, errors, "patient")  # the patient ID is PHI: not in the event
        if instances and matched:
            group = Group(
                level="patient",
                uid=patient_id,
                generation=opened.generation,
                instances=instances,
                patient_id=patient_id,
            )
            opened.tasks += self._tasks(conn, config, group, matched, matched, opened.now)
        return True


SERIES_LEVEL = Level(
    name="series",
    table=SERIES,
    key=SERIES.c.id,
    uid=SERIES.c.series_uid,
    arrival=SERIES.c.last_received_at,
    quiet=lambda settings: settings.series_complete_trigger,
    ref="series_id",
    logged_as="series",
    route=Router._series_group,
)
STUDY_LEVEL = Level(
    name="study",
    table=STUDIES,
    key=STUDIES.c.id,
    uid=STUDIES.c.study_uid,
    arrival=STUDIES.c.last_received_at,
    quiet=lambda settings: settings.study_complete_trigger,
    ref="study_id",
    logged_as=None,
    route=Router._study_group,
)
# A patient's group is active again whenever one of its studies completes (last_activity).
PATIENT_LEVEL = Level(
    name="patient",
    table=PATIENT_GROUPS,
    key=PATIENT_GROUPS.c.patient_id,
    uid=PATIENT_GROUPS.c.patient_id,
    arrival=PATIENT_GROUPS.c.last_activity,
    quiet=lambda settings: settings.patient_complete_trigger,
    ref=None,
    logged_as=None,
    route=Router._patient_group,
)


def rule_errors(conn: Connection, errors: dict[str, str], level: str, **refs: int) -> None:
    """An event for each rule that had no answer: it counted as not matching this group."""
    for name, error in errors.items():
        log.warning("rule %r could not be evaluated for a %s: %s", name, level, error)
        record_event(
            conn,
            "rule.error",
            f"rule {name!r} could not be evaluated and counted as not matching: {error}",
            severity="error",
            details={"rule": name, "level": level},
            **refs,
        )


__all__ = ["PassResult", "Router"]
