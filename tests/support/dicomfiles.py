"""Reading files back the way a user checks them: the dataset bytes, the stored rows."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import Engine, select

from caduceus.core.db.models import INSTANCES


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information: the dataset exactly as it was encoded."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM", f"{path} has no DICOM preamble"
    group_length = struct.unpack_from("<I", raw, 140)[0]
    return raw[144 + group_length :]


def transfer_syntax(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def stored_instances(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(INSTANCES).order_by(INSTANCES.c.id))]


def stored_path(home: Path, row: dict[str, Any]) -> Path:
    return home / row["path"]
