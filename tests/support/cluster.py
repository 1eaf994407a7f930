"""Several "machines" on this one: process groups that share a data folder and a database.

A machine is what one host of a caduceus cluster runs: its own receiver on its own port, and a
router, a processor and a dispatcher, each a separate `caduceus <service>` process. Machines
share nothing but the data root (in production a network file system) and PostgreSQL, so what
one process knows reaches the others only through those two, as across real hosts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import Caduceus, free_port, wait_for_port

SERVICES = ("receiver", "router", "processor", "dispatcher")


@dataclass
class Service(Caduceus):
    """One service of one machine; its output goes to <home>/<machine>-<service>.out."""

    machine: str = ""

    def start(self, command: str = "receiver", *args: str) -> Service:
        self.log_path = self.home / f"{self.machine}-{command}.out"
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "caduceus", command, *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed without its siblings
            )
        if command == "receiver":
            wait_for_port(self.port, process=self.process)
        return self

    def kill(self) -> None:
        """SIGKILL, as a machine that loses power: no clean stop, leases stay held."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@dataclass
class Machine:
    name: str
    home: Path
    database_url: str
    env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)

    def start(self, *services: str) -> Machine:
        port = free_port()
        for command in services or SERVICES:
            service = Service(
                self.home,
                self.database_url,
                port,
                ae_title="CADUCEUS",
                extra_env=dict(self.env),
                machine=self.name,
            )
            self.services[command] = service.start(command)
        return self

    @property
    def receiver(self) -> Service:
        return self.services["receiver"]

    def stop(self) -> None:
        for service in self.services.values():
            if service.process is None or service.process.poll() is not None:
                continue
            # stop() kills the group itself when the grace time runs out.
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.stop()

    def logs(self) -> str:
        return "\n".join(
            f"--- {self.name} {command}\n{service.log()[-4000:]}"
            for command, service in self.services.items()
        )


__all__ = ["SERVICES", "Machine", "Service"]
