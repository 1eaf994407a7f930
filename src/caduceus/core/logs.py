"""Logging in key=value form on stderr, one line per event, with the service's name."""

from __future__ import annotations

import logging
import os
import sys


class _KeyValueFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\n", " | ")
        line = (
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
            f"service={self.service} pid={os.getpid()} logger={record.name} msg={message!r}"
        )
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(service: str, level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("CADUCEUS_LOG_LEVEL", "INFO")).upper())
    # pynetdicom logs every PDU at INFO; only its warnings matter to an operator.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
