"""Which tasks are whose: the conditions that make a task the processor's or the dispatcher's.

The services claim by them and the bookkeeper counts the queues by them; both read them here,
so a count can never disagree with what a worker would claim.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, or_

from caduceus.core.db.models import TASKS
from caduceus.core.states import TaskState

# Tasks with modules to run: queued, or processing (a processor that died leaves it so).
PROCESSABLE: ColumnElement[bool] = and_(
    TASKS.c.action.in_(("process", "both")),
    TASKS.c.state.in_((TaskState.QUEUED, TaskState.PROCESSING)),
)

# A "both" task becomes the dispatcher's once the processor has handed it over (dispatching).
DISPATCHABLE: ColumnElement[bool] = or_(
    and_(
        TASKS.c.action == "route",
        TASKS.c.state.in_((TaskState.QUEUED, TaskState.DISPATCHING)),
    ),
    and_(TASKS.c.action == "both", TASKS.c.state == TaskState.DISPATCHING),
)
