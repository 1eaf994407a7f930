"""Several "machines" on this one: process groups that share a data folder and a database.

A machine is what one host of a caduceus cluster runs: its own receiver on its own port, and a
router, a processor and a dispatcher, each a separate `caduceus <service>` process. Machines
share nothing but the data root (in production a network file system) and PostgreSQL, so what
one process knows reaches the others only through those two, as across real hosts.

Where this runs as root with `ip` and `socat`, each machine gets a network namespace of its
own (`ip netns`), joined to the others by a bridge: its receiver listens on the machine's own
address, and PostgreSQL and the DICOM target are reached over the bridge, as from another host.
Elsewhere the machines are plain process groups on 127.0.0.1, each receiver on its own port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.processes import Caduceus, free_port, require, run
from tests.support.waiting import wait_for_port

SERVICES = ("receiver", "router", "processor", "dispatcher")


def _tag() -> str:
    # Interface names have at most 15 characters; the pid keeps parallel test runs apart.
    return f"cdc{os.getpid() % 100000}"


def _free_subnet() -> str:
    """A 10.213.x network that no interface here uses (another test run's bridge)."""
    used = run(["ip", "-o", "-4", "addr"]).stdout
    for step in range(251):
        subnet = f"10.213.{(os.getpid() + step) % 251}"
        if f" {subnet}." not in used:
            return subnet
    raise RuntimeError("no free 10.213.x subnet")


class Network:
    """A bridge on this host (the "LAN") and one namespace per machine plugged into it."""

    def __init__(self) -> None:
        self.tag = _tag()
        self.subnet = _free_subnet()
        self.host = f"{self.subnet}.1"
        self.bridge = f"{self.tag}br"
        self.namespaces: list[str] = []
        self.forwarders: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()  # machines may start in parallel threads
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.host}/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")

    @classmethod
    def create(cls) -> tuple[Network | None, str]:
        """A network, or None and why namespaces cannot be used here."""
        why_not = cls.available()
        if why_not:
            return None, why_not
        try:
            return cls(), ""
        except RuntimeError as exc:  # e.g. no bridge support in this kernel or container
            run(["ip", "link", "del", f"{_tag()}br"])  # what __init__ made before it failed
            return None, str(exc)

    @staticmethod
    def available() -> str:
        """Empty if namespaces can be made here, else why not."""
        if os.environ.get("CADUCEUS_TEST_NO_NETNS"):
            return "CADUCEUS_TEST_NO_NETNS is set"
        if os.geteuid() != 0:
            return "not root"
        for tool in ("ip", "socat"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        probe = f"cdcprobe{os.getpid() % 100000}"
        if run(["ip", "netns", "add", probe]).returncode != 0:
            return "ip netns add failed"
        run(["ip", "netns", "del", probe])
        return ""

    def _ip(self, *args: str) -> None:
        result = run(["ip", *args])
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def add(self) -> tuple[str, str]:
        """A new machine's namespace and address."""
        with self._lock:
            number = len(self.namespaces) + 2
            namespace, veth = f"{self.tag}n{number}", f"{self.tag}v{number}"
            self.namespaces.append(namespace)
        self._ip("netns", "add", namespace)
        self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        self._ip("link", "set", veth, "master", self.bridge)
        self._ip("link", "set", veth, "up")
        address = f"{self.subnet}.{number}"
        self._ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        self._ip("-n", namespace, "link", "set", "eth0", "up")
        self._ip("-n", namespace, "link", "set", "lo", "up")
        return namespace, address

    def expose(self, port: int) -> int:
        """Make a service that listens only on this host's 127.0.0.1 (PostgreSQL) reachable
        on the bridge; returns the port on the bridge address."""
        outer = free_port()
        self.forwarders.append(
            subprocess.Popen(
                [
                    "socat",
                    f"TCP-LISTEN:{outer},bind={self.host},fork,reuseaddr",
                    f"TCP:127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        return outer

    def close(self) -> None:
        for forwarder in self.forwarders:
            forwarder.terminate()
            forwarder.wait(10)
        for namespace in self.namespaces:
            run(["ip", "netns", "del", namespace])  # takes its end of the veth pair along
        run(["ip", "link", "del", self.bridge])


@dataclass
class Service(Caduceus):
    """One service of one machine; its output goes to <home>/<machine>-<service>.out."""

    machine: str = ""
    namespace: str = ""
    address: str = "127.0.0.1"

    def start(self, command: str = "receiver", *args: str) -> Service:
        self.log_path = self.home / f"{self.machine}-{command}.out"
        self.home.mkdir(parents=True, exist_ok=True)
        inside = ["ip", "netns", "exec", self.namespace] if self.namespace else []
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*inside, sys.executable, "-m", "caduceus", command, *args],
                env={**self.env, "CADUCEUS_DICOM_HOST": self.address},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed without its siblings
            )
        if command == "receiver":
            wait_for_port(self.port, process=self.process, address=self.address)
        return self

    def kill(self) -> None:
        """SIGKILL, as a machine that loses power: no clean stop, leases stay held."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def storescu(receiver: Service, folder: Path) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sending a folder to a machine's receiver, at the machine's address."""
    args = [require("storescu"), "-aec", receiver.ae_title, "+sd", "+r"]
    return run([*args, receiver.address, str(receiver.port), str(folder)], timeout=300)


@dataclass
class Machine:
    name: str
    home: Path
    database_url: str
    env: dict[str, str]
    network: Network | None = None
    services: dict[str, Service] = field(default_factory=dict)

    def start(self, *services: str) -> Machine:
        port = free_port()
        namespace, address, url = "", "127.0.0.1", self.database_url
        if self.network is not None:
            namespace, address = self.network.add()
            database = make_url(self.database_url)
            outer = self.network.expose(database.port or 5432)
            url = database.set(host=self.network.host, port=outer).render_as_string(
                hide_password=False
            )
        for command in services or SERVICES:
            service = Service(
                self.home,
                url,
                port,
                extra_env=dict(self.env),
                machine=self.name,
                namespace=namespace,
                address=address,
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


__all__ = ["SERVICES", "Machine", "Network", "Service", "storescu"]
