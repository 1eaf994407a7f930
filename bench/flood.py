"""Connection floods against the receiver: is an echo from another address still answered?

Starts `caduceus receiver` (two workers, default settings) in a temporary folder on a free
port, then, all on loopback:

1. 400 idle connections from 127.0.0.2; five echoes from 127.0.0.1, with their latency.
2. 300 connections from 127.0.0.2 each sending one byte of an association request every
   10 s, for `--drip` seconds (default 60); an echo from 127.0.0.1 every 5 s.
3. 3,000 connections from 60 addresses (127.0.1.x); the workers' threads and RSS before,
   during and after.

    .venv/bin/python bench/flood.py [--drip 60]

Needs `echoscu` (DCMTK) on the PATH. About two minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.support.processes import require  # noqa: E402
from tests.support.proctree import children, rss_mb, threads  # noqa: E402
from tests.support.rawscu import connect  # noqa: E402

ECHOSCU = require("echoscu")  # DCMTK's, not pynetdicom's script of the same name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo(port: int) -> float | None:
    started = time.monotonic()
    result = subprocess.run(
        [ECHOSCU, "-to", "10", "-aec", "CADUCEUS", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=30,
    )
    return time.monotonic() - started if result.returncode == 0 else None


def show(label: str, latencies: list[float | None]) -> None:
    answered = [x for x in latencies if x is not None]
    worst = f"{max(answered):.3f} s" if answered else "-"
    print(f"{label}: {len(answered)}/{len(latencies)} echoes answered, slowest {worst}")


def workers(parent: int) -> tuple[int, float]:
    pids = children(parent)
    return sum(threads(p) for p in pids), sum(rss_mb(p) for p in pids)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drip", type=float, default=60.0, help="seconds of slow drip")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="caduceus-flood-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADUCEUS_")}
    env.update(
        CADUCEUS_HOME=str(home),
        CADUCEUS_DICOM_PORT=str(port),
        CADUCEUS_DICOM_HOST="127.0.0.1",
        CADUCEUS_RECEIVER_WORKERS="2",
        CADUCEUS_RECEIVER_DISK_RESERVE_MB="0",
    )
    log = open(home / "receiver.log", "wb")  # noqa: SIM115 - the child owns it
    receiver = subprocess.Popen(
        [sys.executable, "-m", "caduceus", "receiver"], env=env, stdout=log, stderr=log
    )
    held: list[socket.socket] = []
    try:
        for _ in range(60):
            if echo(port) is not None:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"the receiver does not answer; see {home / 'receiver.log'}")

        held += [connect(port, "127.0.0.2") for _ in range(400)]
        show("400 idle connections from 127.0.0.2", [echo(port) for _ in range(5)])
        for sock in held:
            sock.close()
        held.clear()

        held += [connect(port, "127.0.0.2") for _ in range(300)]
        latencies: list[float | None] = []
        end = time.monotonic() + args.drip
        next_drip = 0.0
        while time.monotonic() < end:
            if time.monotonic() >= next_drip:
                for sock in held:
                    with contextlib.suppress(OSError):
                        sock.send(b"\x01")
                next_drip = time.monotonic() + 10
            latencies.append(echo(port))
            time.sleep(5)
        show(f"300 slow-drip connections from 127.0.0.2 for {args.drip:.0f} s", latencies)
        for sock in held:
            sock.close()
        held.clear()

        before = workers(receiver.pid)
        held += [connect(port, f"127.0.1.{1 + n % 60}") for n in range(3000)]
        time.sleep(2)
        during = workers(receiver.pid)
        for sock in held:
            sock.close()
        held.clear()
        time.sleep(3)
        after = workers(receiver.pid)
        print(
            "3000 connections: worker threads "
            f"{before[0]} -> {during[0]} -> {after[0]}, worker RSS "
            f"{before[1]:.0f} -> {during[1]:.0f} -> {after[1]:.0f} MiB (before, during, after)"
        )
    finally:
        for sock in held:
            sock.close()
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
