"""The dispatcher run inside a test, at a time the test chooses."""

from __future__ import annotations

from datetime import datetime

from caduceus.core.config.models import Config
from caduceus.core.storage import DataRoot
from caduceus.dispatcher.dispatch import dispatch
from caduceus.dispatcher.queue import claim
from tests.support.processes import Caduceus


def run_dispatcher(receiver: Caduceus, cfg: Config, now: datetime) -> list[str]:
    """Claim and dispatch every task due at `now`; the state each dispatch left its task in."""
    engine = receiver.engine()
    root = DataRoot(receiver.home)
    states = []
    while (task_id := claim(engine, "test", now)) is not None:
        states.append(dispatch(engine, root, cfg, task_id, set(), now))
    return states
