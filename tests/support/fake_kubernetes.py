"""A stand-in for a Kubernetes API server: the few endpoints the Job runner calls.

No cluster can run on the development and CI machines (no kubelet, no container runtime that a
cluster could drive), so the runner's tests talk HTTP to this server through the official
client instead. It keeps the Jobs it is given, makes one pod per Job and plays a scripted life
for it: running for a few status reads, then ending as the script says. A script can also act
as the module, writing files where the Job's volume mounts point (subPaths of the data root).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.support.processes import free_port

JOBS = "/apis/batch/v1/namespaces/"
PODS = "/api/v1/namespaces/"


@dataclass
class Script:
    """How the pod of the next Job lives and ends."""

    exit_code: int | None = 0
    output: str | bytes = ""  # the pod's log
    # The Job's Failed condition when the pod does not succeed: BackoffLimitExceeded, or
    # DeadlineExceeded for the cluster stopping it at activeDeadlineSeconds.
    failed_reason: str = "BackoffLimitExceeded"
    terminated_reason: str = ""  # e.g. OOMKilled
    waiting: tuple[str, str] | None = None  # the pod never starts (e.g. ImagePullBackOff)
    running_reads: int = 2  # status reads that see the Job still running
    never_ends: bool = False
    module: Callable[[dict[str, Path]], None] | None = None  # gets {mountPath: host folder}
    create_status: int = 201  # e.g. 403 for a processor without the Role
    unavailable_reads: int = 0  # the first status reads get 503 (an API server restarting)


@dataclass
class FakeCluster:
    data_root: Path
    script: Script = field(default_factory=Script)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)  # where each Job was created
    deleted: list[str] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)
    ran: set[str] = field(default_factory=set)
    unavailable: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mounts(self, job: dict[str, Any]) -> dict[str, Path]:
        """Where each of the module's mounts lands on the data root (the claim's root)."""
        container = job["spec"]["template"]["spec"]["containers"][0]
        return {
            mount["mountPath"]: self.data_root / mount.get("subPath", "")
            for mount in container.get("volumeMounts", [])
        }

    # -- what the API answers --------------------------------------------------------------

    def job_status(self, name: str) -> dict[str, Any]:
        job = self.jobs[name]
        script = self.script
        self.reads[name] = self.reads.get(name, 0) + 1
        running = script.never_ends or script.waiting is not None
        if running or self.reads[name] <= script.running_reads:
            return {**job, "status": {"active": 1}}
        if name not in self.ran and script.module is not None:
            self.ran.add(name)
            script.module(self.mounts(job))
        if script.exit_code == 0:
            condition = {"type": "Complete", "status": "True"}
            return {**job, "status": {"succeeded": 1, "conditions": [condition]}}
        condition = {"type": "Failed", "status": "True", "reason": script.failed_reason}
        return {**job, "status": {"failed": 1, "conditions": [condition]}}

    def pod(self, name: str) -> dict[str, Any]:
        script = self.script
        state: dict[str, Any]
        if script.waiting is not None:
            reason, message = script.waiting
            state = {"waiting": {"reason": reason, "message": message}}
        elif script.never_ends or self.reads.get(name, 0) <= script.running_reads:
            state = {"running": {}}
        elif script.exit_code is None:
            state = {"running": {}}  # killed at its deadline before it reported an exit
        else:
            reason = script.terminated_reason or ("Completed" if script.exit_code == 0 else "Error")
            state = {"terminated": {"exitCode": script.exit_code, "reason": reason}}
        container = self.jobs[name]["spec"]["template"]["spec"]["containers"][0]
        return {
            "metadata": {"name": f"{name}-pod", "labels": {"job-name": name}},
            "status": {
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": state,
                    }
                ]
            },
        }


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        if isinstance(body, bytes):
            data = body
        else:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _missing(self, name: str) -> None:
        message = f'jobs.batch "{name}" not found'
        self._send(404, {"kind": "Status", "status": "Failure", "message": message, "code": 404})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        job = json.loads(self.rfile.read(length))
        cluster = self.cluster
        with cluster.lock:
            if cluster.script.create_status != 201:
                message = 'jobs.batch is forbidden: User "system:serviceaccount" cannot create'
                status = cluster.script.create_status
                self._send(status, {"kind": "Status", "message": message, "code": status})
                return
            assert url.path.startswith(JOBS) and url.path.endswith("/jobs")
            cluster.created.append(job)
            cluster.namespaces.append(url.path.split("/")[5])
            cluster.jobs[job["metadata"]["name"]] = job
        self._send(201, job)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        parts = url.path.split("/")
        cluster = self.cluster
        with cluster.lock:
            if url.path.startswith(JOBS) and url.path.endswith("/status"):
                name = parts[-2]
                if name not in cluster.jobs:
                    return self._missing(name)
                if cluster.unavailable < cluster.script.unavailable_reads:
                    cluster.unavailable += 1
                    return self._send(503, {"kind": "Status", "message": "restarting"})
                return self._send(200, cluster.job_status(name))
            if url.path.startswith(JOBS) and url.path.endswith("/jobs"):
                key, _, value = query.get("labelSelector", ["="])[0].partition("=")
                items = [
                    job
                    for job in cluster.jobs.values()
                    if job["metadata"].get("labels", {}).get(key) == value
                ]
                return self._send(200, {"kind": "JobList", "metadata": {}, "items": items})
            if url.path.startswith(PODS) and url.path.endswith("/pods"):
                name = query.get("labelSelector", ["job-name="])[0].removeprefix("job-name=")
                items = [cluster.pod(name)] if name in cluster.jobs else []
                return self._send(200, {"kind": "PodList", "metadata": {}, "items": items})
            if url.path.startswith(PODS) and url.path.endswith("/log"):
                return self._send(200, cluster.script.output, "text/plain")
        self._send(404, {"kind": "Status", "message": f"no route {url.path}", "code": 404})

    def do_DELETE(self) -> None:
        name = urlparse(self.path).path.split("/")[-1]
        cluster = self.cluster
        with cluster.lock:
            if cluster.jobs.pop(name, None) is None:
                return self._missing(name)
            cluster.deleted.append(name)
        self._send(200, {"kind": "Status", "status": "Success", "code": 200})


@contextmanager
def fake_cluster(data_root: Path) -> Iterator[tuple[FakeCluster, str]]:
    """A fake API server on a free port: (its state, its URL)."""
    cluster = FakeCluster(data_root=data_root)
    handler = type("Handler", (_Handler,), {"cluster": cluster})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield cluster, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
