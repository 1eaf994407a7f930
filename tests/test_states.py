"""The states of tasks, targets and series, and the table of moves between them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from caduceus.core.states import (
    FINISHED_TASKS,
    MOVES,
    SERIES_MOVES,
    TARGET_MOVES,
    TASK_MOVES,
    TASK_STARTS,
    SeriesState,
    TargetState,
    TaskState,
    may_move,
    who_moves,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "caduceus"

# The moves the code makes, read from its update statements: (from, to, where).
PERFORMED: list[tuple[TaskState | TargetState | SeriesState, str, str]] = [
    # processor/pipeline.py: run() sets processing; _finish hands on; _fail, give_up_or_retry
    (TaskState.QUEUED, "processing", "Pipeline.run"),
    (TaskState.PROCESSING, "processing", "Pipeline.run (resumed)"),
    (TaskState.PROCESSING, "dispatching", "Pipeline._finish"),
    (TaskState.PROCESSING, "done", "Pipeline._finish"),
    (TaskState.PROCESSING, "discarded", "Pipeline._finish"),
    (TaskState.PROCESSING, "error", "Pipeline._fail, give_up_or_retry"),
    (TaskState.QUEUED, "error", "give_up_or_retry before the pipeline started"),
    # dispatcher/dispatch.py: _settle from any dispatchable state
    (TaskState.QUEUED, "done", "_settle"),
    (TaskState.QUEUED, "dispatching", "_settle"),
    (TaskState.QUEUED, "error", "_settle"),
    (TaskState.DISPATCHING, "done", "_settle"),
    (TaskState.DISPATCHING, "dispatching", "_settle"),
    (TaskState.DISPATCHING, "error", "_settle"),
    # dispatcher/dispatch.py: restart
    (TaskState.ERROR, "queued", "restart"),
    (TaskState.QUEUED, "dispatching", "restart of a processed task"),
    (TargetState.ERROR, "pending", "restart"),
    # dispatcher/dispatch.py: _send_to
    (TargetState.PENDING, "done", "_send_to"),
    (TargetState.PENDING, "error", "_send_to"),
    # notifier/consume.py: a notification task is done once sent
    (TaskState.QUEUED, "done", "consume"),
    # core/discard.py: DISCARDABLE
    (TaskState.QUEUED, "discarded", "discard"),
    (TaskState.PROCESSING, "discarded", "discard"),
    (TaskState.DISPATCHING, "discarded", "discard"),
    (TaskState.ERROR, "discarded", "discard"),
    # selftest/runner.py: the self-test removes its own waiting task
    (TaskState.DISPATCHING, "discarded", "self-test"),
    # receiver/records.py: every arrival (re)opens its series and study
    (SeriesState.RECEIVING, "receiving", "receiver"),
    (SeriesState.COMPLETE, "receiving", "receiver"),
    (SeriesState.ERROR, "receiving", "receiver"),
    # router/completion.py
    (SeriesState.RECEIVING, "complete", "Router"),
    (SeriesState.RECEIVING, "error", "Router"),
    # web/api/module_trial.py marks its series complete as the router would
    (SeriesState.RECEIVING, "complete", "module trial"),
]


@pytest.mark.parametrize("kind", [TaskState, TargetState, SeriesState])
def test_every_state_has_a_row_and_moves_only_to_its_own_kind(kind: type) -> None:
    table = MOVES[kind]
    assert set(table) == set(kind)
    for old, moves in table.items():
        for new, who in moves.items():
            assert isinstance(new, kind), (old, new)
            assert who.strip(), f"{old} -> {new} names nobody"


def test_values_are_the_stored_strings() -> None:
    assert [s.value for s in TaskState] == [
        "queued",
        "processing",
        "dispatching",
        "done",
        "error",
        "discarded",
    ]
    assert [s.value for s in TargetState] == ["pending", "done", "error"]
    assert [s.value for s in SeriesState] == ["receiving", "complete", "error"]
    assert TaskState.DONE == "done" and f"{TaskState.DONE}" == "done"


def test_terminal_states_have_no_way_out() -> None:
    assert TASK_MOVES[TaskState.DONE] == {}
    assert TASK_MOVES[TaskState.DISCARDED] == {}
    assert TARGET_MOVES[TargetState.DONE] == {}
    # An error is no end: a restart takes the task up again.
    assert TASK_MOVES[TaskState.ERROR]
    assert set(FINISHED_TASKS) == {TaskState.DONE, TaskState.DISCARDED, TaskState.ERROR}


def test_every_state_can_be_reached() -> None:
    reached = set(TASK_STARTS) | {new for moves in TASK_MOVES.values() for new in moves}
    assert reached == set(TaskState)
    assert {new for moves in TARGET_MOVES.values() for new in moves} == set(TargetState)
    assert {new for moves in SERIES_MOVES.values() for new in moves} == set(SeriesState)


@pytest.mark.parametrize(("old", "new", "where"), PERFORMED)
def test_the_moves_the_code_makes_are_in_the_table(
    old: TaskState | TargetState | SeriesState, new: str, where: str
) -> None:
    assert may_move(old, new), f"{where} moves {old} -> {new}, which the table does not allow"
    assert who_moves(old, new)


def test_a_move_not_in_the_table_is_refused() -> None:
    assert not may_move(TaskState.DONE, "queued")
    assert not may_move(TaskState.DISCARDED, "processing")
    assert not may_move(TargetState.DONE, "pending")
    assert not may_move(TaskState.QUEUED, "no such state")
    with pytest.raises(ValueError, match="from done to queued"):
        who_moves(TaskState.DONE, "queued")


def _written_states() -> set[tuple[str, str]]:
    """(enum, member) of every state a statement in src writes: `state=X.Y`, "state": X.Y."""
    found: set[tuple[str, str]] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            values: list[ast.expr] = []
            if isinstance(node, ast.keyword) and node.arg == "state":
                values.append(node.value)
            elif isinstance(node, ast.Dict):
                values += [
                    v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and k.value == "state"
                ]
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "state" for t in node.targets
            ):
                values.append(node.value)
            for value in values:
                for part in ast.walk(value):
                    if (
                        isinstance(part, ast.Attribute)
                        and isinstance(part.value, ast.Name)
                        and part.value.id in ("TaskState", "TargetState", "SeriesState")
                    ):
                        found.add((part.value.id, part.attr))
    return found


def test_every_state_the_code_writes_is_reached_in_the_table() -> None:
    written = _written_states()
    assert ("TaskState", "DISPATCHING") in written  # the scan finds what it should
    kinds = {"TaskState": TaskState, "TargetState": TargetState, "SeriesState": SeriesState}
    for kind_name, member in written:
        kind = kinds[kind_name]
        state = kind[member]
        reached = {new for moves in MOVES[kind].values() for new in moves}
        assert state in reached or state in TASK_STARTS, f"{kind_name}.{member} is never reached"
