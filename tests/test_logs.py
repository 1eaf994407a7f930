"""Log lines: key=value or JSON, with task and series context, without passwords or PHI."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from caduceus.core import logs
from caduceus.core.logs import log_context, make_handler, phi, setup_logging
from tests.support.rows import tasks
from tests.support.sending import send
from tests.support.waiting import wait_until

Attach = Callable[..., io.StringIO]
log = logging.getLogger("caduceus.test")


@pytest.fixture
def attach(monkeypatch: pytest.MonkeyPatch) -> Iterator[Attach]:
    """Send caduceus.test's records, and only those, to a fresh handler writing to a string."""
    monkeypatch.setattr(logs, "_show_phi", logs._show_phi)
    saved = log.handlers[:], log.level, log.propagate

    def attach(log_format: str = "kv", log_phi: bool = False) -> io.StringIO:
        stream = io.StringIO()
        log.handlers[:] = [make_handler("tester", log_format, log_phi, stream)]
        log.setLevel(logging.DEBUG)
        log.propagate = False
        return stream

    yield attach
    log.handlers[:], log.level, log.propagate = saved


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_key_value_lines_carry_the_service_and_a_quoted_message(attach: Attach) -> None:
    stream = attach()
    log.warning("task %s: %s", "t-1", "two\nlines")
    [line] = lines(stream)
    assert line.startswith("ts=")
    assert " level=warning service=tester " in line and " logger=caduceus.test " in line
    assert line.endswith("msg='task t-1: two | lines'")


def test_context_fields_are_on_every_line_inside_the_block_only(attach: Attach) -> None:
    stream = attach()
    with log_context(task="3f2a", series=17):
        log.info("sending")
        with log_context(step=2):
            log.info("nested")
    log.info("after")
    sending, nested, after = lines(stream)
    assert " task=3f2a series=17 msg='sending'" in sending
    assert " task=3f2a series=17 step=2 msg='nested'" in nested
    assert "task=" not in after and "series=" not in after


def test_context_belongs_to_its_thread(attach: Attach) -> None:
    stream = attach("json")
    inside = threading.Event()
    leave = threading.Event()

    def worker() -> None:
        with log_context(task="worker-task"):
            inside.set()
            leave.wait(5)
            log.info("from the worker")

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(5)
    log.info("from the main thread")
    leave.set()
    thread.join()
    by_message = {d["msg"]: d for d in map(json.loads, lines(stream))}
    assert "task" not in by_message["from the main thread"]
    assert by_message["from the worker"]["task"] == "worker-task"


def test_json_lines_are_valid_json_with_context_and_traceback(attach: Attach) -> None:
    stream = attach("json")
    awkward = 'quote " backslash \\ newline \n tab \t unicode é 漢 control \x01'
    with log_context(task="t-9", series=4):
        log.info("%s", awkward)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("it failed")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["msg"] == awkward
    assert (first["service"], first["level"], first["task"], first["series"]) == (
        "tester",
        "info",
        "t-9",
        "4",
    )
    assert first["ts"].endswith("+00:00") and isinstance(first["pid"], int)
    assert second["level"] == "error" and second["msg"] == "it failed"
    assert "RuntimeError: boom" in second["exc"] and "Traceback" in second["exc"]


def test_context_cannot_overwrite_the_fixed_fields(attach: Attach) -> None:
    stream = attach("json")
    with log_context(level="fake", service="fake", task="t"):
        log.error("real")
    [document] = map(json.loads, lines(stream))
    assert (document["level"], document["service"], document["task"]) == ("error", "tester", "t")


@pytest.mark.parametrize("log_format", ["kv", "json"])
def test_url_passwords_are_masked_in_messages_and_tracebacks(
    attach: Attach, log_format: str
) -> None:
    stream = attach(log_format)
    log.info("connecting to %s", "postgresql://caduceus:s3cret-pw@db:5432/caduceus")
    log.info("webhook https://bot:p%40ss:w/rd@hooks.example.org/x and sftp://u:pw2@h:22/in")
    log.info("a call with a missing argument %s %s", "redis://:pw3@cache/0")
    try:
        raise ConnectionError("cannot reach amqp://guest:hunter2@broker/")
    except ConnectionError:
        log.exception("queue down")
    text = stream.getvalue()
    for secret in ("s3cret-pw", "p%40ss", "w/rd", "pw2", "pw3", "hunter2"):
        assert secret not in text, secret
    assert "postgresql://caduceus:***@db:5432/caduceus" in text
    assert "sftp://u:***@h:22/in" in text
    assert "amqp://guest:***@broker/" in text
    assert "redis://:***@cache/0" in text and "do not fit" in text
    # A URL without a password, and a host with a port, stay as they are.
    log.info("see https://example.org:8443/path and http://user@host/")
    assert lines(stream)[-1].count("***") == 0


# What the router logs today when a patient-level group completes or fails.
ROUTER_LINES = [
    ("completed %s", ("patient:PID-4711",)),
    ("%s %s: %s", ("patient.error", "PID-4711", "a received file is gone")),
]


def test_patient_data_is_masked_by_default(attach: Attach) -> None:
    stream = attach("json")
    for message, args in ROUTER_LINES:
        log.info(message, *args)
    log.warning("header cannot be decoded: bad value 'Doe^Jane^^^' in PN")
    log.info("patient_name='Doe^Jane', PatientID: PID-4711, accession_number=ACC99 modality=CT")
    log.info("an explicit value: %s", phi("PID-4711"))
    text = stream.getvalue()
    for value in ("PID-4711", "Doe", "Jane", "ACC99"):
        assert value not in text, value
    messages = [json.loads(line)["msg"] for line in lines(stream)]
    assert messages[0] == "completed patient:***"
    assert messages[1] == "patient.error ***: a received file is gone"
    assert messages[4] == "an explicit value: ***"
    assert "modality=CT" in messages[3]  # only patient data goes


def test_patient_data_is_shown_when_asked_for(attach: Attach) -> None:
    stream = attach("kv", log_phi=True)
    log.info("completed %s", "patient:PID-4711")
    log.info("name %s", phi("Doe^Jane"))
    log.info("postgresql://u:pw@db/x")
    text = stream.getvalue()
    assert "patient:PID-4711" in text and "Doe^Jane" in text
    assert "pw@" not in text  # passwords are never shown


def test_setup_logging_reads_the_format_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(logs, "_show_phi", False)
    level = root.level
    try:
        monkeypatch.setenv("CADUCEUS_LOG_FORMAT", "json")
        monkeypatch.setenv("CADUCEUS_LOG_PHI", "false")
        setup_logging("router", "info")
        with log_context(series=12):
            logging.getLogger("caduceus.router").info("completed patient:X1")
        document = json.loads(capsys.readouterr().err)
        assert document["service"] == "router" and document["series"] == "12"
        assert document["msg"] == "completed patient:***"
        monkeypatch.setenv("CADUCEUS_LOG_FORMAT", "xml")
        with pytest.raises(ValueError, match="CADUCEUS_LOG_FORMAT"):
            setup_logging("router")
    finally:
        root.setLevel(level)


def test_services_log_json_with_task_context_and_no_patient_data(
    launch: Any, tmp_path: Path
) -> None:
    """Through `caduceus run`: every service's lines are JSON; the dispatcher's carry the task."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "settings": {
                    "series_complete_trigger": 1,
                    "study_complete_trigger": 1,
                    "patient_complete_trigger": 1,
                },
                "targets": {"archive": {"type": "folder", "path": str(archive)}},
                "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["archive"]}},
            }
        )
    )
    instance = launch("run", "--config", str(tmp_path / "config.yaml"), CADUCEUS_LOG_FORMAT="json")
    send(
        instance,
        tmp_path / "ct",
        count=2,
        modality="CT",
        patient_name="Doe^Jane",
        patient_id="PID-4711",
    )
    assert wait_until(lambda: [t["state"] for t in tasks(instance)] == ["done"], timeout=60)
    [task] = tasks(instance)

    def router_done() -> bool:
        return "completed patient:" in instance.log()

    assert wait_until(router_done, timeout=30)
    time.sleep(0.5)
    text = instance.log()
    # The log file also holds the command's own output ("configuration version 1").
    documents = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert not [line for line in text.splitlines() if line.startswith("ts=")]
    services = {d["service"] for d in documents}
    assert {"supervisor", "router", "dispatcher"} <= services
    assert any(
        d["service"] == "dispatcher" and d.get("task") == task["id"] and "done" in d["msg"]
        for d in documents
    )
    assert "PID-4711" not in text and "Doe^Jane" not in text


def _write_lines(path: Path, writer: int, count: int, go: Any) -> None:
    """One process of a service, logging `count` lines to the shared file."""
    from caduceus.core.logfiles import SharedRotatingFileHandler

    handler = SharedRotatingFileHandler(path, max_bytes=4000, backups=400)
    handler.setFormatter(logging.Formatter("%(message)s"))
    go.wait(30)
    for n in range(count):
        text = f"w{writer} line {n:04d} " + "x" * 90
        handler.handle(logging.LogRecord("t", logging.INFO, __file__, 1, text, None, None))
    handler.close()


def test_log_files_rotate_with_several_writers_and_lose_no_line(tmp_path: Path) -> None:
    """Two processes of a service append to one file at once: whichever rotates, the other
    follows to the new file, and every line is in one of the files. (The standard library's
    RotatingFileHandler loses lines here: each process renames files the other still writes.)"""
    path = tmp_path / "logs" / "dispatcher.log"
    count = 6000
    go = multiprocessing.Event()
    writers = [
        multiprocessing.Process(target=_write_lines, args=(path, w, count, go)) for w in (0, 1)
    ]
    for writer in writers:
        writer.start()
    go.set()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    files = sorted(path.parent.glob("dispatcher.log*"))
    assert len(files) > 5
    assert all(f.stat().st_size < 4000 + 120 for f in files if not f.name.endswith(".lock"))
    written = [
        line for f in files if not f.name.endswith(".lock") for line in f.read_text().splitlines()
    ]
    expected = [f"w{w} line {n:04d} " + "x" * 90 for w in (0, 1) for n in range(count)]
    assert sorted(written) == sorted(expected)


def test_reading_a_log_back_finds_the_newest_lines_of_a_task(tmp_path: Path) -> None:
    from caduceus.core.logfiles import read_log

    folder = tmp_path / "logs"
    folder.mkdir()
    older = [{"ts": f"2026-01-01T00:00:{n:02d}.000+00:00", "msg": f"old {n}"} for n in range(3)]
    # Long lines: reading backwards crosses many 64 kB blocks.
    newer = [
        {"ts": "2026-01-01T00:01:00.000+00:00", "level": "info", "msg": f"{n} " + "x" * 3000}
        | ({"task": "t-1"} if n % 10 == 0 else {})
        for n in range(500)
    ]
    (folder / "router.log.1").write_text("".join(json.dumps(d) + "\n" for d in older))
    (folder / "router.log").write_text(
        "".join(json.dumps(d) + "\n" for d in newer) + "not json at all\n"
    )
    newest = read_log(tmp_path, "router", lines=3)
    assert [d["msg"][:4] for d in newest] == ["not ", "499 ", "498 "]
    mine = read_log(tmp_path, "router", task="t-1", lines=1000)
    assert [int(d["msg"].split()[0]) for d in mine] == list(range(490, -1, -10))
    everything = read_log(tmp_path, "router", lines=1000)
    assert len(everything) == 504 and everything[-1]["msg"] == "old 0"
    with pytest.raises(ValueError):
        read_log(tmp_path, "../../etc/passwd")
