"""A real pynetdicom storage SCP that records what arrives and can misbehave on purpose."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from tests.support.processes import free_port


@dataclass
class FlakySCP:
    """Records every C-STORE per association; aborts the chosen associations at instance N."""

    port: int
    abort_at: dict[int, int] = field(default_factory=dict)  # association number -> instance
    stores: list[tuple[int, str]] = field(default_factory=list)
    associations: int = 0
    delay: float = 0.0  # seconds per instance: a slow target
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None
    # (calling AE title, called AE title) of each association, as the requestor sent them.
    titles: list[tuple[str, str]] = field(default_factory=list)

    def on_open(self, event: Any) -> None:
        with self.lock:
            self.associations += 1
            event.assoc.number = self.associations
            request = event.assoc.requestor.primitive
            self.titles.append((request.calling_ae_title, request.called_ae_title))

    def on_store(self, event: Any) -> int:
        time.sleep(self.delay)
        number = event.assoc.number
        with self.lock:
            self.stores.append((number, str(event.request.AffectedSOPInstanceUID)))
            seen = sum(1 for n, _ in self.stores if n == number)
        if self.abort_at.get(number) == seen:
            event.assoc.abort()  # the instance arrived, but its success is never sent
        return 0x0000

    def uids(self) -> set[str]:
        return {uid for _, uid in self.stores}

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def start_flaky_scp(delay: float = 0.0) -> FlakySCP:
    ae = AE(ae_title="FLAKY")
    ae.add_supported_context(CTImageStorage)
    scp = FlakySCP(free_port(), delay=delay)
    scp.server = ae.start_server(
        ("127.0.0.1", scp.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, scp.on_store), (evt.EVT_ESTABLISHED, scp.on_open)],
    )
    return scp
