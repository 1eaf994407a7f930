"""A real Podman service (Docker Engine API) for the container runner's tests, and a test image.

The service runs on a socket in a tmp folder with its own containers.conf: runc instead of crun
and modest default ulimits, the two workarounds some sandboxed hosts need (see
docs/processor-runners.md). The test image is built without any registry: a root filesystem
with a static busybox and its applet links, imported with `podman import`. Its command runs the
shell script in the container's TEST_SCRIPT variable, so each test brings its own script.
The image is labelled with a hash of what went into it and reused while that stays the same.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

IMAGE = "localhost/caduceus-test-module:latest"
APPLETS = ("sh", "cp", "cat", "ls", "id", "sleep", "wget", "nc", "echo", "touch", "mkdir")
APPLETS += ("env", "ip", "grep", "timeout", "head", "cut", "rm", "true", "false")
APPLETS += ("mount", "unshare")  # for the escapes a module must not manage
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
CMD = '["/bin/sh", "-c", "eval \\"$TEST_SCRIPT\\""]'
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""
SBIN_PATH = f"/usr/sbin:/sbin:/usr/local/sbin:{os.defpath}"


@dataclass
class Podman:
    url: str  # unix:///.../podman.sock
    image: str
    client: docker.DockerClient
    process: subprocess.Popen[bytes]
    log_path: Path

    def labelled(self, task_id: str) -> list[str]:
        """Ids of all containers (running or not) labelled with this task."""
        found = self.client.containers.list(all=True, filters={"label": f"caduceus.task={task_id}"})
        return [container.id or "" for container in found]

    def gateway(self) -> str:
        """The host's address on the engine's default bridge network."""
        for network in self.client.networks.list():
            for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
                if config.get("Gateway"):
                    return str(config["Gateway"])
        pytest.skip("the container engine has no bridge network with a gateway")

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _is_static(binary: Path) -> bool:
    """Whether an ELF executable has no program interpreter (PT_INTERP), i.e. is static."""
    data = binary.read_bytes()[:65536]
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only
        return False
    order = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    for index in range(phnum):
        (kind,) = struct.unpack_from(order + "I", data, phoff + index * phentsize)
        if kind == 3:  # PT_INTERP
            return False
    return True


def _static_busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file() and _is_static(path):
            return path
    pytest.skip("no static busybox (Debian: busybox-static)")


def _rootfs_tar(busybox: Path) -> bytes:
    """A root filesystem as a tar: /bin/busybox, its applet links, /etc/passwd and /tmp."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for folder, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777)):
            add(folder, tarfile.DIRTYPE, mode)
        add("bin/busybox", tarfile.REGTYPE, 0o755, busybox.read_bytes())
        for applet in APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, PASSWD.encode())
    return buffer.getvalue()


def ensure_image(folder: Path, env: dict[str, str]) -> str:
    """The test image, imported unless one built from the same parts is there already."""
    rootfs = _rootfs_tar(_static_busybox())
    digest = hashlib.sha256(rootfs + CMD.encode()).hexdigest()[:16]
    inspect = subprocess.run(
        ["podman", "image", "inspect", "--format", '{{index .Labels "caduceus.test"}}', IMAGE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if inspect.returncode == 0 and inspect.stdout.strip() == digest:
        return IMAGE
    tar_path = folder / "rootfs.tar"
    tar_path.write_bytes(rootfs)
    subprocess.run(
        [
            "podman",
            "import",
            "--change",
            f"CMD {CMD}",
            "--change",
            f"LABEL caduceus.test={digest}",
            str(tar_path),
            IMAGE,
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return IMAGE


def start_podman(folder: Path) -> Podman:
    """`podman system service` on a socket in folder, with the test image in its storage."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (Debian: podman)")
    if shutil.which("runc", path=SBIN_PATH) is None:
        pytest.skip("runc is not installed (Debian: runc)")
    _static_busybox()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    env["PATH"] = f"{env.get('PATH', os.defpath)}:{SBIN_PATH}"
    image = ensure_image(folder, env)
    socket_path = folder / "podman.sock"
    url = f"unix://{socket_path}"
    log_path = folder / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["podman", "system", "service", "--time=0", url],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"podman system service ended: {log_path.read_text()[-2000:]}")
        if socket_path.exists():
            try:
                client = docker.DockerClient(base_url=url, version="auto")
                client.ping()
                break
            except docker.errors.DockerException:
                pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"podman system service is not answering: {log_path.read_text()}")
        time.sleep(0.1)
    return Podman(url=url, image=image, client=client, process=process, log_path=log_path)
