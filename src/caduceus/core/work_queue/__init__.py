"""The shared work queue: the one place where tasks are claimed, leased and given back.

- predicates: which tasks are the processor's (PROCESSABLE) and the dispatcher's (DISPATCHABLE)
- guard: the lease-owner condition every write for a leased task carries (held_by, still_mine)
- lease: claim, renew, keep_lease, release
- controls: suspending and resuming queues
- worker: the claim / keep the lease / work / release loop the services run

The task states themselves, and who may move a task between them, are in core/states.py.
"""

from caduceus.core.work_queue.controls import set_suspended, suspended
from caduceus.core.work_queue.guard import held_by, leased_to, still_mine
from caduceus.core.work_queue.lease import (
    LEASE,
    OWNER_SILENT_AFTER,
    claim,
    keep_lease,
    release,
    renew,
)
from caduceus.core.work_queue.predicates import DISPATCHABLE, PROCESSABLE
from caduceus.core.work_queue.worker import DISPATCH, PROCESS, Job, Queue, Worker

__all__ = [
    "DISPATCH",
    "DISPATCHABLE",
    "LEASE",
    "OWNER_SILENT_AFTER",
    "PROCESS",
    "PROCESSABLE",
    "Job",
    "Queue",
    "Worker",
    "claim",
    "held_by",
    "keep_lease",
    "leased_to",
    "release",
    "renew",
    "set_suspended",
    "still_mine",
    "suspended",
]
