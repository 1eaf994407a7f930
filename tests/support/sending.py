"""Sending a synthetic series to a running receiver, as a modality would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from tests.support.processes import Caduceus, storescu


def send(receiver: Caduceus, folder: Path, **spec: Any) -> list[Path]:
    """Write a series (SeriesSpec's fields as keywords) into `folder` and send it with DCMTK's
    storescu; the files, once the receiver has taken every one."""
    files = write_series(folder, SeriesSpec(**spec))
    result = storescu(receiver, folder)
    assert result.returncode == 0, result.stderr
    return files
