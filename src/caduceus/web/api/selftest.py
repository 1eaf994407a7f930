"""The self-test through the API: operators start a run, anyone logged in watches it.

A run works in a thread of the web process and answers at once with its id; its stages are
then read with GET /api/selftest/{id}. One run at a time per web process: two runs would
each see the other's series and temporary rules.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Request, status
from pydantic import BaseModel, Field

from caduceus.selftest import Run, SelfTest, new_run
from caduceus.selftest.history import recorded
from caduceus.web.api.engines import reader, writer
from caduceus.web.auth import Operator, Viewer

router = APIRouter(prefix="/api", tags=["selftest"])

KEEP = 20  # finished runs kept in memory; older ones are read from the history
_CREATING = threading.Lock()


class Start(BaseModel):
    timeout: float = Field(
        default=60.0, ge=5, le=600, description="seconds each waiting stage may take"
    )


class Runs:
    """The runs of this web process: the one going on, and the recent ones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recent: OrderedDict[str, Run] = OrderedDict()
        self.current: Run | None = None

    def claim(self, run: Run) -> bool:
        with self.lock:
            if self.current is not None:
                return False
            self.current = run
            self.recent[run.id] = run
            while len(self.recent) > KEEP:
                self.recent.popitem(last=False)
            return True

    def done(self, run: Run) -> None:
        with self.lock:
            if self.current is run:
                self.current = None

    def get(self, run_id: str) -> Run | None:
        with self.lock:
            return self.recent.get(run_id)

    def newest(self) -> Run | None:
        with self.lock:
            return next(reversed(self.recent.values()), None)


def runs_of(request: Request) -> Runs:
    state = request.app.state
    with _CREATING:
        if not hasattr(state, "selftests"):
            state.selftests = Runs()
    return state.selftests  # type: ignore[no-any-return]


def latest(request: Request) -> dict[str, Any] | None:
    """The run going on or the newest finished one, from memory or else from the history."""
    run = runs_of(request).newest()
    return run.as_dict() if run is not None else recorded(reader(request))


@router.post("/selftest", status_code=status.HTTP_202_ACCEPTED)
def start(
    request: Request, who: Operator, options: Start | None = Body(default=None)
) -> dict[str, str]:
    """Start a self-test; 409 while one is running."""
    runs = runs_of(request)
    run = new_run(who.username)
    if not runs.claim(run):
        raise HTTPException(status.HTTP_409_CONFLICT, "a self-test is running already")
    test = SelfTest(
        request.app.state.settings,
        reader(request),
        writer(request),
        run,
        timeout=(options or Start()).timeout,
    )

    def work() -> None:
        try:
            test.execute()
        finally:
            runs.done(run)

    threading.Thread(target=work, name=f"selftest-{run.id}", daemon=True).start()
    return {"id": run.id}


@router.get("/selftest")
def newest(request: Request, _: Viewer) -> dict[str, Any]:
    """The run going on or the last one (null when there was none)."""
    return {"run": latest(request)}


@router.get("/selftest/{run_id}")
def one(request: Request, run_id: str, _: Viewer) -> dict[str, Any]:
    """A run's stages: each waiting, running, passed or failed, with a message and seconds."""
    run = runs_of(request).get(run_id)
    found = run.as_dict() if run is not None else recorded(reader(request), run_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such self-test")
    return found
