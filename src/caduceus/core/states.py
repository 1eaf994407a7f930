"""The states of the work, and who may move a task, a target or a series from one to the next.

The states are stored as text (tasks.state, task_targets.state, series.state, studies.state,
patient_groups.state): each enum's values are exactly the strings in the database, so a
member can be written and compared wherever a string was, and no migration is needed.

Each enum has its moves written down beside it: the states it may move to, and who makes that
move. A newcomer who asks "where does a task's state change, and who may change it" reads the
answer here; tests/test_states.py checks the table against the code that moves tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class TaskState(StrEnum):
    """A task's place in the queue (tasks.state)."""

    QUEUED = "queued"  # made by the router; waits for a processor or a dispatcher
    PROCESSING = "processing"  # a processor runs (or will resume) its modules
    DISPATCHING = "dispatching"  # being sent, or waiting for a target's next try
    DONE = "done"  # sent, processed or notified: finished
    ERROR = "error"  # failed; a restart from the web or the CLI queues it again
    DISCARDED = "discarded"  # dropped by a rule, a module, a user or the self-test


class TargetState(StrEnum):
    """One target of one task (task_targets.state): each is sent to, and retried, on its own."""

    PENDING = "pending"  # still to send, now or at next_attempt_at
    DONE = "done"  # the target confirmed every instance
    ERROR = "error"  # gave up after retry_max attempts


class SeriesState(StrEnum):
    """Completion of a series; studies and patient groups use the same states."""

    RECEIVING = "receiving"  # instances arrive; the router completes it after a quiet time
    COMPLETE = "complete"  # the router made its tasks (generation counts the completions)
    ERROR = "error"  # completion failed (a rule or the disk); an arrival reopens it


# The states a task is made in (by the router's task maker): not moves, so not in the table.
TASK_STARTS: frozenset[TaskState] = frozenset({TaskState.QUEUED, TaskState.DISCARDED})

# from-state -> {to-state: who makes the move}. A state that moves to itself is written down
# where the code rewrites it (a retry keeps a task dispatching; a resumed pipeline stays
# processing). done and discarded are the ends: nothing moves a task out of them.
TASK_MOVES: Mapping[TaskState, Mapping[TaskState, str]] = {
    TaskState.QUEUED: {
        TaskState.PROCESSING: "processor (it starts the pipeline)",
        TaskState.DISPATCHING: "dispatcher (a target waits for its next try); "
        "web/CLI restart of a processed task whose sending failed",
        TaskState.DONE: "dispatcher (every target done); notifier (a notification task sent)",
        TaskState.ERROR: "dispatcher (every target failed); processor (unexpected failures)",
        TaskState.DISCARDED: "web/CLI discard; self-test (removing its own tasks)",
    },
    TaskState.PROCESSING: {
        TaskState.PROCESSING: "processor (a pipeline resumed at its next step)",
        TaskState.DISPATCHING: "processor (a 'both' task handed to the dispatcher)",
        TaskState.DONE: "processor (a 'process' task finished)",
        TaskState.ERROR: "processor (a step failed)",
        TaskState.DISCARDED: "processor (a module discarded it); web/CLI discard",
    },
    TaskState.DISPATCHING: {
        TaskState.DISPATCHING: "dispatcher (a target waits for its next try)",
        TaskState.DONE: "dispatcher (every target done)",
        TaskState.ERROR: "dispatcher (a target gave up, none pending)",
        TaskState.DISCARDED: "web/CLI discard; self-test (removing its own tasks)",
    },
    TaskState.ERROR: {
        TaskState.QUEUED: "web/CLI restart",
        TaskState.DISCARDED: "web/CLI discard",
    },
    TaskState.DONE: {},
    TaskState.DISCARDED: {},
}

# Targets are made pending (by the router, or by the processor when a module chose them).
TARGET_MOVES: Mapping[TargetState, Mapping[TargetState, str]] = {
    TargetState.PENDING: {
        TargetState.PENDING: "dispatcher (an attempt failed; next try later)",
        TargetState.DONE: "dispatcher (the target confirmed everything)",
        TargetState.ERROR: "dispatcher (more than retry_max attempts failed)",
    },
    TargetState.ERROR: {TargetState.PENDING: "web/CLI restart"},
    TargetState.DONE: {},
}

# Series, studies and patient groups are made receiving by the receiver's first instance.
SERIES_MOVES: Mapping[SeriesState, Mapping[SeriesState, str]] = {
    SeriesState.RECEIVING: {
        SeriesState.RECEIVING: "receiver (another instance)",
        SeriesState.COMPLETE: "router (completion); web/CLI force-complete; web module trial",
        SeriesState.ERROR: "router (completion failed)",
    },
    SeriesState.COMPLETE: {SeriesState.RECEIVING: "receiver (an instance after completion)"},
    SeriesState.ERROR: {SeriesState.RECEIVING: "receiver (another instance)"},
}

MOVES: Mapping[type[StrEnum], Mapping[StrEnum, Mapping[StrEnum, str]]] = {
    TaskState: TASK_MOVES,  # type: ignore[dict-item]
    TargetState: TARGET_MOVES,  # type: ignore[dict-item]
    SeriesState: SERIES_MOVES,  # type: ignore[dict-item]
}

# Tasks nobody works on any more (the cleaner removes their folders after their retention).
FINISHED_TASKS: tuple[TaskState, ...] = (TaskState.DONE, TaskState.DISCARDED, TaskState.ERROR)


def may_move(old: TaskState | TargetState | SeriesState, new: str) -> bool:
    """True if the table allows `old` to become `new` (a state of the same kind)."""
    table = MOVES[type(old)]
    try:
        wanted = type(old)(new)
    except ValueError:
        return False
    return wanted in table[old]


def who_moves(old: TaskState | TargetState | SeriesState, new: str) -> str:
    """Who makes the move from `old` to `new`; ValueError if no one may."""
    if not may_move(old, new):
        raise ValueError(f"a {type(old).__name__} does not move from {old} to {new}")
    return MOVES[type(old)][old][type(old)(new)]
