"""Group commit: the threads of a process share database commits.

A thread that wants its work committed queues it; if no commit is under way it becomes the
leader, takes everything queued so far, runs it in one transaction (each piece in its own
savepoint, so one failure spoils nothing else), commits once and wakes the others. Threads that
arrive during a commit wait for the next one. Alone, a thread just commits its own work, with
no hand-over to another thread; under load one fsync covers a whole batch and the threads do
not queue one by one for the database's write lock. A caller returns only after its work is
committed, so an answer sent after that is still a promise kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

log = logging.getLogger("caduceus.db")

T = TypeVar("T")
_Work = tuple[Callable[[Connection], Any], "Future[Any]"]


class GroupCommitter:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.changed = threading.Condition()
        self.pending: list[_Work] = []
        self.committing = False

    def run(self, fn: Callable[[Connection], T]) -> T:
        """Run fn(conn) in a transaction; return its result once it is committed."""
        future: Future[T] = Future()
        with self.changed:
            self.pending.append((fn, future))
            while self.committing and not future.done():
                self.changed.wait()
            if future.done():
                return future.result()
            self.committing = True
            batch, self.pending = self.pending, []
        try:
            self._commit(batch)
        finally:
            with self.changed:
                self.committing = False
                self.changed.notify_all()
        return future.result()

    def _commit(self, batch: list[_Work]) -> None:
        results: list[tuple[Future[Any], bool, Any]] = []
        try:
            with self.engine.begin() as conn:
                if len(batch) == 1:
                    fn, future = batch[0]
                    results.append((future, True, fn(conn)))
                else:
                    for fn, future in batch:
                        try:
                            with conn.begin_nested():
                                results.append((future, True, fn(conn)))
                        except Exception as exc:
                            results.append((future, False, exc))
        except Exception as exc:
            # Nothing of this batch was committed: every waiter learns it.
            log.warning("group commit of %d failed: %s", len(batch), exc)
            for _, future in batch:
                future.set_exception(exc)
            return
        for future, ok, value in results:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
