"""DCMTK's storescp as a DICOM target for tests, on a free port, writing into a folder."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port, require
from tests.support.waiting import wait_for_port


@dataclass
class StoreSCP:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    aet: str = "STORESCP"

    def target(self) -> dict[str, object]:
        """This storescp as a DICOM target in a configuration document."""
        return {"type": "dicom", "host": "127.0.0.1", "port": self.port, "called_aet": self.aet}

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_storescp(folder: Path, *options: str, port: int | None = None) -> StoreSCP:
    """Options e.g. "+xa" (accept all transfer syntaxes); by default only uncompressed ones."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [require("storescp"), "-aet", "STORESCP", "-od", str(folder), *options, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process=process)
    return StoreSCP(port, folder, process)
