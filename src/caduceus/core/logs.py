"""Logging on stderr, one line per event, with the service's name.

A service also writes its lines to its own file, $CADUCEUS_HOME/logs/<service>.log, always as
JSON (core/logfiles.py), which the web interface reads. Lines on stderr are key=value (the
default) or JSON (`CADUCEUS_LOG_FORMAT=json`), one object a line. Work on
a task or a series runs inside `log_context(task=..., series=...)`, and every line logged
meanwhile, in that thread, carries those fields.

Two filters stand between a record and the output, as a last line of defence:
- a URL's password (`scheme://user:secret@host`) is masked, always;
- values that look like patient data (DICOM person names, `patient:<id>` group names,
  `patient_id=...` and the like) are masked unless `CADUCEUS_LOG_PHI=true`.
Code that logs a patient's data on purpose wraps the value in `phi()`, which shows it only
when PHI logging is on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MASK = "***"
FORMATS = ("kv", "json")

_context: ContextVar[Mapping[str, str] | None] = ContextVar("caduceus_log_context", default=None)
_show_phi = False


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add fields (task=..., series=...) to every line logged in this block, in this thread.

    Nested blocks add to the outer one's fields; None leaves a field out.
    """
    added = {key: str(value) for key, value in fields.items() if value is not None}
    token = _context.set({**context_fields(), **added})
    try:
        yield
    finally:
        _context.reset(token)


def context_fields() -> dict[str, str]:
    return dict(_context.get() or {})


class phi:  # lower case: used like a function, log.info("%s", phi(value))
    """A patient's data in a log message: shown only with CADUCEUS_LOG_PHI=true."""

    __slots__ = ("value",)

    def __init__(self, value: object):
        self.value = value

    def __str__(self) -> str:
        return str(self.value) if _show_phi else MASK

    __repr__ = __str__


# -- filters ------------------------------------------------------------------------------

# scheme://user:secret@host; the secret runs to the last "@" before whitespace, so an
# unencoded "/" or ":" in it is masked too (masking a little too much is the safe side).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s@]+(?=@)")

_PHI_PATTERNS = (
    # DICOM person names: family^given^middle^prefix^suffix.
    re.compile(r"[^\W_][\w'.\-]*\^[\w'.\-^]*"),
    # The router's patient-level groups: "patient:<id>" and "patient.error <id>: ...".
    re.compile(r"(?P<head>\bpatient(?::|\.error ))(?:.+?)(?=: |$)", re.MULTILINE),
    # key=value, key: value, 'key': 'value' for the attributes that identify a patient.
    re.compile(
        r"(?P<head>\b(?:patient_?(?:name|id|birth_?date)|other_?patient_?ids|"
        r"accession_?number|referring_?physician_?name)\b['\"]?\s*[=:]\s*)"
        r"(?:'[^']*'|\"[^\"]*\"|[^\s,;)}\]]+)",
        re.IGNORECASE,
    ),
)


def mask_secrets(text: str) -> str:
    return _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def mask_phi(text: str) -> str:
    for pattern in _PHI_PATTERNS:
        text = pattern.sub(lambda m: (m.groupdict().get("head") or "") + MASK, text)
    return text


class _Masking(logging.Filter):
    """Rewrites a record's message and traceback through `mask` (it never drops a record)."""

    def __init__(self, mask: Callable[[str], str]):
        super().__init__()
        self.mask = mask
        self._plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # Arguments that do not fit the format: logging's own error report would print
            # them unmasked, so the line says what went wrong instead, masked.
            message = f"{record.msg} (log arguments that do not fit: {record.args!r})"
            record.msg, record.args = message, None
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


class SecretFilter(_Masking):
    def __init__(self) -> None:
        super().__init__(mask_secrets)


class PhiFilter(_Masking):
    def __init__(self) -> None:
        super().__init__(mask_phi)


# -- formatters ---------------------------------------------------------------------------


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    text = record.exc_text or ""
    if record.stack_info:
        text = (text + "\n" if text else "") + record.stack_info
    return text


def _kv_value(value: str) -> str:
    plain = value and not any(c.isspace() or c in "\"'=\\" for c in value)
    return value if plain else repr(value)


class _KeyValueFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\n", " | ")
        line = (
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
            f"service={self.service} pid={os.getpid()} logger={record.name}"
        )
        for key, value in context_fields().items():
            line += f" {key}={_kv_value(value)}"
        line += f" msg={message!r}"
        if exc := _exception_text(self, record):
            line += " exc=" + repr(exc)
        return line


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "pid": os.getpid(),
            "logger": record.name,
        }
        # Context fields never replace the fields above.
        document.update((k, v) for k, v in context_fields().items() if k not in document)
        document["msg"] = record.getMessage()
        if exc := _exception_text(self, record):
            document["exc"] = exc
        return json.dumps(document, ensure_ascii=False, default=str)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def make_handler(
    service: str,
    log_format: str | None = None,
    log_phi: bool | None = None,
    stream: Any = None,
) -> logging.Handler:
    """A handler with the format and filters the settings (or the arguments) ask for."""
    global _show_phi
    chosen = (log_format or os.environ.get("CADUCEUS_LOG_FORMAT") or "kv").strip().lower()
    if chosen not in FORMATS:
        raise ValueError(f"CADUCEUS_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {chosen!r}")
    _show_phi = _flag(os.environ.get("CADUCEUS_LOG_PHI")) if log_phi is None else log_phi
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        _JsonFormatter(service) if chosen == "json" else _KeyValueFormatter(service)
    )
    return _masked(handler)


def _masked(handler: logging.Handler) -> logging.Handler:
    if not _show_phi:
        handler.addFilter(PhiFilter())
    handler.addFilter(SecretFilter())
    return handler


def make_file_handler(service: str, home: Path, file_mode: int = 0o600) -> logging.Handler:
    """$CADUCEUS_HOME/logs/<service>.log: JSON lines (the web interface filters them by task),
    behind the same masking as the lines on stderr. Call after make_handler, which reads
    CADUCEUS_LOG_PHI."""
    from caduceus.core.logfiles import SharedRotatingFileHandler, log_path

    handler = SharedRotatingFileHandler(log_path(home, service), file_mode=file_mode)
    handler.setFormatter(_JsonFormatter(service))
    return _masked(handler)


def setup_logging(
    service: str, level: str | None = None, home: Path | None = None, file_mode: int = 0o600
) -> None:
    """Lines on stderr and, given the data root, in the service's own log file too."""
    root = logging.getLogger()
    handlers = [make_handler(service)]
    if home is not None:
        try:
            handlers.append(make_file_handler(service, home, file_mode))
        except OSError as exc:  # a read-only data root must not keep the service from running
            print(f"caduceus: no log file for {service}: {exc}", file=sys.stderr)
    root.handlers[:] = handlers
    root.setLevel((level or os.environ.get("CADUCEUS_LOG_LEVEL", "INFO")).upper())
    # pynetdicom logs every PDU at INFO; only its warnings matter to an operator.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
