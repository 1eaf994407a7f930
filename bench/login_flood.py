"""How long does a user's login take while someone floods the login with throwaway names?

Starts `caduceus web` in a temporary folder on a free port, sets the first admin's password,
then floods the login from 127.0.0.1 (a process of its own) with throwaway user names over 200
connections, each sending one login after another for 10 s; meanwhile the admin logs in from
127.0.0.2 three times, 2 s apart. Prints the admin's latencies and the flood's answers. Then
sends six 9.9 MiB JSON bodies to /api/login at once and prints the largest resident memory of
the web process seen meanwhile (sampled every 10 ms).

    .venv/bin/python bench/login_flood.py [--flood 200] [--seconds 10]

To measure another checkout, put its `src` first: `PYTHONPATH=/elsewhere/src python ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

PASSWORD = "correct horse battery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _guesses(url: str, count: int, seconds: float) -> Counter[int]:
    """`count` connections, each sending throwaway-name logins one after another."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    deadline = time.monotonic() + seconds
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as flood:

        async def guess(worker: int) -> None:
            n = 0
            while time.monotonic() < deadline:
                body = {"username": f"nobody-{worker}-{n}", "password": "guess"}
                try:
                    statuses[(await flood.post("/api/login", json=body)).status_code] += 1
                except httpx.HTTPError:
                    statuses[0] += 1
                n += 1

        await asyncio.gather(*(guess(w) for w in range(count)))
    return statuses


def _flood_process(url: str, count: int, seconds: float, out: Any) -> None:
    out.put(dict(asyncio.run(_guesses(url, count, seconds))))


def _flood(url: str, count: int, seconds: float) -> tuple[dict[int, int], list[float]]:
    """A flood of `seconds` from a process of its own (its client work must not delay the
    user's); the admin logs in from 127.0.0.2 from the 2nd second on, three times."""
    results: Any = multiprocessing.Queue()
    flood = multiprocessing.Process(target=_flood_process, args=(url, count, seconds, results))
    flood.start()
    took = []
    for _ in range(3):
        time.sleep(2)
        with httpx.Client(
            base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=300
        ) as user:
            started = time.monotonic()
            answer = user.post("/api/login", json={"username": "admin", "password": PASSWORD})
            took.append(time.monotonic() - started)
            assert answer.status_code == 200, answer.text
    statuses = results.get()
    flood.join()
    return statuses, took


def _bodies(url: str, pid: int) -> int:
    body = b"[" + b"0," * (int(9.9 * 1024 * 1024) // 2 - 1) + b"0]"
    peak, done = _rss_kib(pid), threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, _rss_kib(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()

    def send(_: int) -> int:
        headers = {"Content-Type": "application/json"}
        try:
            answer = httpx.post(f"{url}/api/login", content=body, headers=headers, timeout=300)
            return answer.status_code
        except httpx.HTTPError:
            return 0

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(send, range(6)))
    done.set()
    sampler.join()
    print(f"six 9.9 MiB bodies: answers {Counter(statuses)}")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=200, help="concurrent connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the flood lasts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        port = _free_port()
        env = {
            **os.environ,
            "CADUCEUS_HOME": home,
            "CADUCEUS_WEB_HOST": "127.0.0.1",
            "CADUCEUS_WEB_PORT": str(port),
            "CADUCEUS_FSYNC": "false",
        }
        web = subprocess.Popen([sys.executable, "-m", "caduceus", "web"], env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            first = Path(home) / "initial-admin-password"
            for _ in range(600):
                if first.exists():
                    try:
                        if httpx.get(f"{url}/login", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                time.sleep(0.1)
            with httpx.Client(base_url=url, timeout=60) as admin:
                old = first.read_text().strip()
                csrf = admin.post("/api/login", json={"username": "admin", "password": old})
                changed = admin.post(
                    "/api/me/password",
                    json={"current_password": old, "new_password": PASSWORD},
                    headers={"X-CSRF-Token": csrf.json()["csrf_token"]},
                )
                assert changed.status_code == 200, changed.text
            print(f"web RSS at rest: {_rss_kib(web.pid) // 1024} MiB")
            statuses, took = _flood(url, args.flood, args.seconds)
            print(f"flood of {args.flood} connections for {args.seconds} s: {statuses}")
            shown = ", ".join(f"{t:.2f}" for t in took)
            print(f"admin's logins from 127.0.0.2 during the flood took {shown} s")
            time.sleep(2)
            before = _rss_kib(web.pid)
            peak = _bodies(url, web.pid)
            print(f"web RSS under the bodies: {before // 1024} MiB before, {peak // 1024} MiB peak")
        finally:
            web.send_signal(signal.SIGTERM)
            try:
                web.wait(30)
            except subprocess.TimeoutExpired:
                web.kill()


if __name__ == "__main__":
    main()
