"""The notifier: events become webhook calls and mails, delivered with retries, recorded.

Images arrive through a real receiver; the router, the dispatcher and the notifier's consumer
and sender run in the test with an explicit clock. Webhooks go to a real HTTP server in a
thread, mails to a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from sqlalchemy import Engine, delete, insert, select, update

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.engine import make_engine
from caduceus.core.db.migrate import upgrade
from caduceus.core.db.models import CURSORS, EVENTS, NOTIFICATIONS, TASKS
from caduceus.core.events import record_event
from caduceus.core.service_names import SERVICES
from caduceus.dispatcher import dispatch as dispatch_module
from caduceus.notifier import consume as consume_module
from caduceus.notifier.consume import consume
from caduceus.notifier.deliver import FIRST_DELAY, MAX_ATTEMPTS, Outcome, deliver_due
from caduceus.notifier.render import TemplateProblem, render_html, render_payload
from tests.support.clock import later
from tests.support.dispatching import run_dispatcher
from tests.support.processes import Caduceus, free_port
from tests.support.routing import router_for
from tests.support.rows import events, tasks
from tests.support.sending import send

# -- a webhook receiver and a mail server ------------------------------------------------


class Hook(ThreadingHTTPServer):
    """Records every request; answers with `status`."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _HookHandler)
        self.requests: list[dict[str, Any]] = []
        self.status = 204
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def bodies(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.requests]


class _HookHandler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append({"path": self.path, "headers": self.headers, "body": body})
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        content = cast(bytes, envelope.original_content)
        self.messages.append(cast(EmailMessage, message_from_bytes(content, policy=policy.default)))
        return "250 OK"


USER, PASSWORD = "notifier", "s3cret-Pa55word"


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.stop()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticator,
        auth_require_tls=False,
    )
    controller.start()
    yield box, port
    controller.stop()


# -- configuration and helpers -----------------------------------------------------------


def config(tmp_path: Path, rules: dict[str, Any], **settings: Any) -> Config:
    (tmp_path / "out").mkdir(exist_ok=True)
    return Config.model_validate(
        {
            "settings": {"retry_delay": 10, "retry_max": 0, **settings},
            "targets": {
                "out": {"type": "folder", "path": str(tmp_path / "out")},
                "dead": {"type": "folder", "path": "/nonexistent/archive"},
            },
            "rules": rules,
        }
    )


def rule(modality: str, targets: list[str] | None = None, **notification: Any) -> dict[str, Any]:
    return {
        "rule": f"@Modality@ == '{modality}'",
        "targets": ["out"] if targets is None else targets,
        "notification": notification,
    }


def smtp(port: int, **more: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "allow_login_in_clear": True,  # aiosmtpd here speaks no TLS
        "username": USER,
        "password": PASSWORD,
        "sender": "caduceus@example.org",
        **more,
    }


def route(receiver: Caduceus, folder: Path, cfg: Config, **spec: Any) -> None:
    send(receiver, folder, **spec)
    router_for(receiver).run_pass(cfg, later(61))


def run_consumer(engine: Engine, cfg: Config, batch: int = 500) -> int:
    """Consume every event; `now` a little ahead so no gap in the ids holds the test up."""
    created = 0
    while True:
        result = consume(engine, cfg, later(120), batch=batch)
        created += result.created
        if not result.events:  # (events the consumer itself records come in the next batch)
            return created


def notifications(receiver: Caduceus) -> list[dict[str, Any]]:
    with receiver.engine().connect() as conn:
        rows = conn.execute(select(NOTIFICATIONS).order_by(NOTIFICATIONS.c.id))
        return [dict(r._mapping) for r in rows]


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def plain(message: Message) -> str:
    return cast(EmailMessage, message).get_content()  # type: ignore[no-any-return]


# -- reception, completion, error ------------------------------------------------------------

RECEPTION_PAYLOAD = """{
  "event": "{{ event }}", "trigger": "{{ trigger }}", "rule": "{{ rule }}",
  "task": "{{ task_id }}", "kind": "{{ event_kind }}", "instances": {{ instances }},
  "targets": {{ targets|tojson }}, "patient": "{{ patient_name }}", "mrn": "{{ mrn }}",
  "acc": "{{ acc }}", "study": "{{ study_uid }}", "phi": {{ phi_included|tojson }}
}"""


def test_reception_webhook_carries_the_rendered_payload(
    receiver: Caduceus, tmp_path: Path, hook: Hook
) -> None:
    url = f"{hook.url}/in?token=abc123"
    rules = {
        "ct": rule("CT", on_reception=True, webhook_url=url, webhook_payload=RECEPTION_PAYLOAD)
    }
    cfg = config(tmp_path, rules)
    route(receiver, tmp_path / "ct", cfg, count=3, modality="CT", patient_name="Doe^Jane")
    [task] = tasks(receiver)
    engine = receiver.engine()

    assert run_consumer(engine, cfg) == 1
    [row] = notifications(receiver)
    assert (row["trigger"], row["channel"], row["state"], row["task_id"]) == (
        "reception",
        "webhook",
        "pending",
        task["id"],
    )
    [outcome] = deliver_due(engine, cfg, later(62))
    assert (outcome.state, outcome.attempts, outcome.error) == ("sent", 1, None)

    [request] = hook.requests
    assert request["path"] == "/in?token=abc123"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {
        "event": "RECEIVED",
        "trigger": "reception",
        "rule": "ct",
        "task": task["id"],
        "kind": "task.created",
        "instances": 3,
        "targets": ["out"],
        "patient": "[hidden]",
        "mrn": "[hidden]",
        "acc": "[hidden]",
        "study": "[hidden]",
        "phi": False,
    }
    [row] = notifications(receiver)
    assert (row["state"], row["attempts"], row["last_error"]) == ("sent", 1, None)
    assert row["sent_at"] is not None and row["next_attempt_at"] is None
    [sent] = events(receiver, "notification.sent")
    assert sent["task_id"] == task["id"] and "abc123" not in sent["message"]
    # Nothing is sent twice.
    assert deliver_due(engine, cfg, later(3600)) == []
    assert run_consumer(engine, cfg) == 0 and len(hook.requests) == 1


def test_completion_mails_plain_and_html_escaping_the_patient_name(
    receiver: Caduceus,
    tmp_path: Path,
    mailbox: tuple[Mailbox, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    box, port = mailbox
    name = "<script>alert(1)</script>"
    rules = {
        "ct": rule(
            "CT",
            on_completion=True,
            email=["ops@example.org"],
            email_subject="Done: {{ rule }} {{ event }}\n{{ patient_name }}",
            email_body="Patient {{ patient_name }} ({{ mrn }}, {{ acc }}): "
            "{{ instances }} image(s) to {{ targets|join(', ') }}, {{ targets_done|length }} done",
        ),
        "mr": rule(
            "MR",
            on_completion=True,
            email=["a@example.org", "b@example.org"],
            email_type="html",
            email_body="<p>Patient {{ patient_name }}, task {{ task_state }}</p>",
        ),
    }
    cfg = config(tmp_path, rules, notifications_include_phi=True, smtp=smtp(port))
    route(
        receiver, tmp_path / "ct", cfg, count=2, modality="CT", patient_name=name, patient_id="P1"
    )
    route(
        receiver, tmp_path / "mr", cfg, count=2, modality="MR", patient_name=name, patient_id="P2"
    )
    engine = receiver.engine()
    assert run_consumer(engine, cfg) == 0  # nothing on reception

    # The consumer may read a target's dispatch.done before the dispatcher sets the task's
    # state: the completion must be found all the same.
    settle = dispatch_module._settle

    def consume_first(*args: Any, **kwargs: Any) -> str:
        run_consumer(engine, cfg)
        return settle(*args, **kwargs)

    monkeypatch.setattr(dispatch_module, "_settle", consume_first)
    assert run_dispatcher(receiver, cfg, later(62)) == ["done", "done"]
    monkeypatch.undo()
    rows = notifications(receiver)
    assert sorted((r["rule"], r["trigger"], r["channel"]) for r in rows) == [
        ("ct", "completion", "email"),
        ("mr", "completion", "email"),
    ]
    assert run_consumer(engine, cfg) == 0  # the task's state, now done, adds nothing

    outcomes = deliver_due(engine, cfg, later(63))
    assert [o.state for o in outcomes] == ["sent", "sent"]
    by_subject = {m["Subject"]: m for m in box.messages}
    text = by_subject[f"Done: ct COMPLETED {name}"]
    assert text["From"] == "caduceus@example.org" and text["To"] == "ops@example.org"
    assert text.get_content_type() == "text/plain"
    assert plain(text).strip() == f"Patient {name} (P1, ACC0001): 2 image(s) to out, 1 done"
    html = by_subject["[caduceus] Rule mr: COMPLETED"]
    assert html.get_content_type() == "text/html"
    assert html["To"] == "a@example.org, b@example.org"
    body = plain(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>" not in body
    assert "task done" in body
    assert sorted(box.envelopes[1].rcpt_tos + box.envelopes[0].rcpt_tos) == [
        "a@example.org",
        "b@example.org",
        "ops@example.org",
    ]


def test_error_notification_after_a_dispatch_fails(
    receiver: Caduceus, tmp_path: Path, hook: Hook
) -> None:
    payload = (
        '{"event": "{{ event }}", "error": "{{ error }}", "target": "{{ target }}", '
        '"state": "{{ task_state }}", "failed": {{ targets_failed|tojson }}}'
    )
    rules = {
        "ct": rule(
            "CT",
            ["dead"],
            on_error=True,
            on_completion=True,
            webhook_url=hook.url,
            webhook_payload=payload,
        )
    }
    cfg = config(tmp_path, rules)
    route(receiver, tmp_path / "ct", cfg, count=2, modality="CT")
    engine = receiver.engine()
    assert run_consumer(engine, cfg) == 0
    assert run_dispatcher(receiver, cfg, later(62)) == ["error"]
    assert run_consumer(engine, cfg) == 1
    [row] = notifications(receiver)
    assert row["trigger"] == "error"
    [outcome] = deliver_due(engine, cfg, later(63))
    assert outcome.state == "sent"
    [body] = hook.bodies()
    assert body["event"] == "ERROR" and body["target"] == "dead"
    assert body["state"] == "error" and body["failed"] == ["dead"]
    assert body["error"].startswith("dead: giving up after 1 attempt(s)")


def test_completion_on_request_only_when_a_module_asked(
    receiver: Caduceus, tmp_path: Path, hook: Hook
) -> None:
    payload = (
        '{"event": "{{ event }}", "text": "{{ notification_text }}", '
        '"details": "{{ details }}", "requested": {{ notification_requested|tojson }}}'
    )
    rules = {
        "ct": rule(
            "CT", on_completion_on_request=True, webhook_url=hook.url, webhook_payload=payload
        )
    }
    cfg = config(tmp_path, rules)
    route(receiver, tmp_path / "a", cfg, count=1, modality="CT", patient_id="A")
    route(receiver, tmp_path / "b", cfg, count=1, modality="CT", patient_id="B")
    by_patient = {t["patient_id"]: t["id"] for t in tasks(receiver)}
    engine = receiver.engine()
    with engine.begin() as conn:
        record_event(
            conn,
            "process.notification",
            'found a "nodule"',
            task_id=by_patient["A"],
            details={"requested": True, "module": "ai"},
        )
        record_event(
            conn,
            "process.notification",
            "nothing to report",
            task_id=by_patient["B"],
            details={"requested": False, "module": "ai"},
        )
    assert run_dispatcher(receiver, cfg, later(62)) == ["done", "done"]
    assert run_consumer(engine, cfg) == 1
    [row] = notifications(receiver)
    assert (row["task_id"], row["trigger"]) == (by_patient["A"], "completion")
    deliver_due(engine, cfg, later(63))
    assert hook.bodies() == [
        {
            "event": "COMPLETED",
            "text": 'found a "nodule"',
            "details": 'found a "nodule"',
            "requested": True,
        }
    ]


def test_notification_only_rule_announces_reception_and_completion(
    receiver: Caduceus, tmp_path: Path, hook: Hook
) -> None:
    rules = {
        "announce": {
            "rule": "@Modality@ == 'CT'",
            "action": "notification",
            "notification": {
                "on_reception": True,
                "on_completion": True,
                "webhook_url": hook.url,
                "webhook_payload": '"event": "{{ event }}", "state": "{{ task_state }}"',
            },
        }
    }
    cfg = config(tmp_path, rules)
    route(receiver, tmp_path / "ct", cfg, count=1, modality="CT")
    engine = receiver.engine()
    assert run_consumer(engine, cfg) == 2
    [task] = tasks(receiver)
    assert task["state"] == "done"
    assert [r["trigger"] for r in notifications(receiver)] == ["reception", "completion"]
    deliver_due(engine, cfg, later(62))
    assert hook.bodies() == [
        {"event": "RECEIVED", "state": "done"},
        {"event": "COMPLETED", "state": "done"},
    ]


# -- patient data ----------------------------------------------------------------------------


def test_phi_hidden_by_default_and_present_when_allowed(
    receiver: Caduceus, tmp_path: Path, hook: Hook
) -> None:
    rules = {
        "ct": rule("CT", on_reception=True, webhook_url=hook.url, webhook_payload=RECEPTION_PAYLOAD)
    }
    hidden, shown = config(tmp_path, rules), config(tmp_path, rules, notifications_include_phi=True)
    for folder, name, mrn, acc in (
        ("a", "Roe^Richard", "MRN-1", "ACC-1"),
        ("b", "Poe^Edgar", "MRN-2", "ACC-2"),
    ):
        route(
            receiver,
            tmp_path / folder,
            hidden,
            count=1,
            modality="CT",
            patient_name=name,
            patient_id=mrn,
            accession_number=acc,
        )
    engine = receiver.engine()
    assert run_consumer(engine, hidden) == 2
    studies = {t["patient_id"]: t["study_uid"] for t in tasks(receiver)}
    deliver_due(engine, hidden, later(62), limit=1)
    deliver_due(engine, shown, later(62), limit=1)
    first, second = hook.requests
    for secret in (b"Roe", b"Richard", b"MRN-1", b"ACC-1", studies["MRN-1"].encode()):
        assert secret not in first["body"]
    assert {
        k: v for k, v in json.loads(first["body"]).items() if k in ("patient", "mrn", "acc")
    } == {
        "patient": "[hidden]",
        "mrn": "[hidden]",
        "acc": "[hidden]",
    }
    body = json.loads(second["body"])
    assert (body["patient"], body["mrn"], body["acc"], body["phi"]) == (
        "Poe^Edgar",
        "MRN-2",
        "ACC-2",
        True,
    )
    assert body["study"] == studies["MRN-2"]


# -- retries and failures ------------------------------------------------------------------


def test_dead_webhook_is_retried_with_backoff_and_delivered_once_back(
    receiver: Caduceus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()  # nothing listens here yet
    url = f"http://bot:Pa55-in-URL@127.0.0.1:{port}/hooks/PATH-TOKEN?token=QUERY-TOKEN"
    rules = {"ct": rule("CT", on_reception=True, webhook_url=url, webhook_payload='"a": 1')}
    cfg = config(tmp_path, rules)
    route(receiver, tmp_path / "ct", cfg, count=1, modality="CT")
    engine = receiver.engine()
    run_consumer(engine, cfg)
    now = later(62)

    [first] = deliver_due(engine, cfg, now)
    assert (first.state, first.attempts) == ("pending", 1)
    [row] = notifications(receiver)
    wait = utc(row["next_attempt_at"]) - now
    assert FIRST_DELAY / 2 <= wait <= FIRST_DELAY
    assert f"127.0.0.1:{port}" in row["last_error"]
    assert deliver_due(engine, cfg, now + timedelta(seconds=1)) == []  # not due yet
    [second] = deliver_due(engine, cfg, now + timedelta(minutes=1))
    assert (second.state, second.attempts) == ("pending", 2)
    [row] = notifications(receiver)
    wait = utc(row["next_attempt_at"]) - (now + timedelta(minutes=1))
    assert FIRST_DELAY <= wait <= FIRST_DELAY * 2

    server = Hook(port)  # the server is back
    try:
        [third] = deliver_due(engine, cfg, now + timedelta(minutes=10))
        assert (third.state, third.attempts) == ("sent", 3)
        [request] = server.requests
        assert request["path"] == "/hooks/PATH-TOKEN?token=QUERY-TOKEN"
        assert request["headers"]["Authorization"].startswith("Basic ")
    finally:
        server.stop()
    [row] = notifications(receiver)
    assert row["state"] == "sent" and row["last_error"] is None
    recorded = caplog.text + json.dumps(
        [e["message"] for e in events(receiver, "notification.sent")]
    )
    for secret in ("Pa55-in-URL", "PATH-TOKEN", "QUERY-TOKEN", "bot:"):
        assert secret not in recorded
        assert secret not in (first.error or "") + (second.error or "")


def test_webhook_failing_every_time_ends_failed_with_the_reason_and_no_secret(
    receiver: Caduceus, tmp_path: Path, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hook.status = 503
    url = f"{hook.url}/hooks/PATH-TOKEN?token=QUERY-TOKEN"
    rules = {"ct": rule("CT", on_error=True, on_reception=True, webhook_url=url)}
    cfg = config(tmp_path, rules)
    route(receiver, tmp_path / "ct", cfg, count=1, modality="CT")
    engine = receiver.engine()
    run_consumer(engine, cfg)
    now = later(62)
    outcomes: list[Outcome] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        [outcome] = deliver_due(engine, cfg, now)
        outcomes.append(outcome)
        [row] = notifications(receiver)
        assert row["attempts"] == attempt
        if attempt < MAX_ATTEMPTS:
            nominal = FIRST_DELAY * 2 ** (attempt - 1)
            wait = utc(row["next_attempt_at"]) - now
            assert nominal / 2 <= wait <= nominal
        now += timedelta(hours=2)
    assert [o.state for o in outcomes] == ["pending"] * (MAX_ATTEMPTS - 1) + ["failed"]
    [row] = notifications(receiver)
    assert row["state"] == "failed" and row["next_attempt_at"] is None
    assert row["last_error"] == f"{hook.url} answered HTTP 503 Service Unavailable"
    assert len(hook.requests) == MAX_ATTEMPTS
    # The default payload: the basic fields.
    assert hook.bodies()[0]["event"] == "RECEIVED" and "patient_name" not in hook.bodies()[0]
    [failed] = events(receiver, "notification.failed")
    assert failed["severity"] == "error" and "HTTP 503" in failed["message"]
    assert deliver_due(engine, cfg, now + timedelta(days=1)) == []
    for secret in ("PATH-TOKEN", "QUERY-TOKEN"):
        assert secret not in caplog.text + failed["message"] + row["last_error"]


def test_smtp_login_refused_is_recorded_without_the_password(
    receiver: Caduceus,
    tmp_path: Path,
    mailbox: tuple[Mailbox, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    box, port = mailbox
    wrong = "Wr0ng-Pa55word-xyz"
    rules = {"ct": rule("CT", on_reception=True, email=["ops@example.org"])}
    cfg = config(tmp_path, rules, smtp=smtp(port, password=wrong))
    route(receiver, tmp_path / "ct", cfg, count=1, modality="CT")
    engine = receiver.engine()
    run_consumer(engine, cfg)
    [outcome] = deliver_due(engine, cfg, later(62))
    assert outcome.state == "pending"
    [row] = notifications(receiver)
    assert f"127.0.0.1:{port} refused the login of 'notifier': 535" in row["last_error"]
    assert wrong not in row["last_error"] and wrong not in caplog.text
    assert box.messages == []

    # STARTTLS configured but not offered: the login is never sent in clear.
    cfg = config(tmp_path, rules, smtp=smtp(port, security="starttls"))
    [outcome] = deliver_due(engine, cfg, later(3600))
    assert "STARTTLS" in (outcome.error or "") and box.messages == []

    # With the right password and no TLS asked for, it goes out.
    cfg = config(tmp_path, rules, smtp=smtp(port))
    [outcome] = deliver_due(engine, cfg, later(7200))
    assert outcome.state == "sent" and outcome.attempts == 3
    [message] = box.messages
    assert message["Subject"] == "[caduceus] Rule ct: RECEIVED"
    assert "Patient" not in plain(message)  # the default body names no patient without PHI


# -- templates -------------------------------------------------------------------------------


def test_template_errors_are_recorded_as_failed_and_nothing_is_sent(
    receiver: Caduceus, tmp_path: Path, hook: Hook, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox

    def announce(**notification: Any) -> dict[str, Any]:
        return {
            "rule": "@Modality@ == 'CT'",
            "action": "notification",
            "notification": {"on_reception": True, **notification},
        }

    rules = {
        "filter": announce(webhook_url=hook.url, webhook_payload='{"a": "{{ rule|nosuch }}"}'),
        "json": announce(webhook_url=hook.url, webhook_payload='{"a": {{ rule }}}'),
        "syntax": announce(email=["ops@example.org"], email_body="{% for x in %}"),
        "escape": announce(webhook_url=hook.url, webhook_payload="{{ ''.__class__.__mro__ }}"),
        "globals": announce(email=["ops@example.org"], email_subject="{{ cycler.__init__ }}"),
    }
    cfg = config(tmp_path, rules, smtp=smtp(port))
    route(receiver, tmp_path / "ct", cfg, count=1, modality="CT")
    engine = receiver.engine()
    assert run_consumer(engine, cfg) == 5
    outcomes = {o.rule: o for o in deliver_due(engine, cfg, later(62))}
    assert {r: (o.state, o.attempts) for r, o in outcomes.items()} == dict.fromkeys(
        rules, ("failed", 1)
    )
    assert (
        outcomes["filter"].error
        == "template: TemplateAssertionError (line 1): No filter named 'nosuch'."
    )
    assert outcomes["json"].error is not None
    assert outcomes["json"].error.startswith("template: the payload is not valid JSON")
    assert "TemplateSyntaxError" in (outcomes["syntax"].error or "")
    assert "SecurityError" in (outcomes["escape"].error or "")
    assert "unsafe" in (outcomes["globals"].error or "")
    assert hook.requests == [] and box.messages == []
    assert len(events(receiver, "notification.failed")) == 5
    assert {r["state"] for r in notifications(receiver)} == {"failed"}


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ self.__init__ }}",
        "{{ targets.append(1) }}",
        "{{ ''.format.__self__ }}",
        "{{ '{0.__class__}'.format(rule) }}",
    ],
)
def test_the_sandbox_refuses_python_internals(template: str) -> None:
    context = {"rule": "ct", "targets": ["out"]}
    refused = "unsafe|has no attribute"  # the sandbox hides some attributes altogether
    with pytest.raises(TemplateProblem, match=refused):
        render_payload('{"x": "' + template + '"}', context)
    with pytest.raises(TemplateProblem, match=refused):
        render_html(template, context)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ 9**(9**9) }}", "too large"),
        ("{{ 'x' * 10**8 }}", "too large"),
        ("{% for i in range(99999) %}{{ i }}{{ '-' * 9 }}{% endfor %}", "longer than"),
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "took"),
    ],
)
def test_rendering_is_bounded(template: str, reason: str) -> None:
    with pytest.raises(TemplateProblem, match=reason):
        render_html(template, {})


def test_payload_values_cannot_break_the_json() -> None:
    context = {"name": 'Doe", "admin": true, "x": "'}
    body = json.loads(render_payload('{"name": "{{ name }}"}', context))
    assert body == {"name": context["name"]}


# -- the consumer's guarantees -----------------------------------------------------------------


def test_restart_never_loses_or_duplicates_a_notification(
    receiver: Caduceus, tmp_path: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = {"ct": rule("CT", on_reception=True, on_completion=True, webhook_url=hook.url)}
    cfg = config(tmp_path, rules)
    route(receiver, tmp_path / "a", cfg, count=1, modality="CT", patient_id="A")
    route(receiver, tmp_path / "b", cfg, count=1, modality="CT", patient_id="B")
    assert run_dispatcher(receiver, cfg, later(62)) == ["done", "done"]
    engine = receiver.engine()

    # A consumer that dies half-way through a batch leaves neither rows nor a moved cursor.
    real = consume_module._notifications_for
    calls = []

    def dies_on_the_third(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(consume_module, "_notifications_for", dies_on_the_third)
    with pytest.raises(RuntimeError):
        run_consumer(engine, cfg)
    monkeypatch.undo()
    assert notifications(receiver) == []
    with engine.connect() as conn:
        assert conn.execute(select(CURSORS.c.last_event_id)).scalar() in (None, 0)

    # Small batches, then again from where it stopped, then again from the very start.
    assert run_consumer(engine, cfg, batch=2) == 4
    assert run_consumer(engine, cfg) == 0
    with engine.begin() as conn:
        conn.execute(update(CURSORS).values(last_event_id=0))
    run_consumer(engine, cfg)
    rows = notifications(receiver)
    assert sorted((r["task_id"], r["trigger"]) for r in rows) == sorted(
        (t["id"], trigger) for t in tasks(receiver) for trigger in ("reception", "completion")
    )
    with engine.connect() as conn:
        last = conn.execute(select(EVENTS.c.id).order_by(EVENTS.c.id.desc()).limit(1)).scalar()
        assert conn.execute(select(CURSORS.c.last_event_id)).scalar() == last
    assert [o.state for o in deliver_due(engine, cfg, later(63))] == ["sent"] * 4
    assert len(hook.requests) == 4


def test_consumer_waits_at_a_gap_in_the_ids_and_starts_with_the_last_hour(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'gap.db'}")
    upgrade(engine)
    now = datetime.now(UTC)
    rules = {"ct": rule("CT", on_reception=True, webhook_url="http://127.0.0.1:9/hook")}
    cfg = config(tmp_path, rules)
    task = {
        "group_key": "k",
        "created_at": now,
        "updated_at": now,
        "rule": "ct",
        "action": "route",
        "level": "series",
        "state": "queued",
        "priority": 1,
        "folder": "tasks/x",
        "targets": ["out"],
        "modules": [],
        "info": {"info": {}},
    }
    with engine.begin() as conn:
        conn.execute(
            insert(TASKS), [{**task, "id": f"t{i}", "group_key": f"k{i}"} for i in range(4)]
        )
        for event_id, at, task_id in (
            (1, now - timedelta(hours=3), "t0"),  # before the first start's hour
            (2, now - timedelta(minutes=5), "t1"),
            (4, now, "t3"),  # 3 is not (yet?) committed
        ):
            conn.execute(
                insert(EVENTS).values(id=event_id, at=at, kind="task.created", task_id=task_id)
            )

    def made() -> list[str]:
        with engine.connect() as conn:
            return list(
                conn.execute(select(NOTIFICATIONS.c.task_id).order_by(NOTIFICATIONS.c.id)).scalars()
            )

    assert consume(engine, cfg, now).events == 1
    assert made() == ["t1"]  # t0 is older than the first start's hour; t3 waits at the gap
    assert consume(engine, cfg, now + timedelta(seconds=5)).events == 0
    with engine.begin() as conn:  # the late transaction commits
        conn.execute(insert(EVENTS).values(id=3, at=now, kind="task.created", task_id="t2"))
    assert consume(engine, cfg, now + timedelta(seconds=5)).events == 2
    assert made() == ["t1", "t2", "t3"]
    # A gap that stays (a rolled-back transaction) is passed once it is old enough.
    with engine.begin() as conn:
        conn.execute(insert(EVENTS).values(id=9, at=now, kind="task.created", task_id="t0"))
        conn.execute(delete(NOTIFICATIONS))
    assert consume(engine, cfg, now + timedelta(seconds=5)).events == 0
    assert consume(engine, cfg, now + timedelta(minutes=1)).events == 1
    assert made() == ["t0"]
    engine.dispose()


# -- the service ----------------------------------------------------------------------------


def test_the_notifier_service_delivers_and_stops_cleanly(
    receiver: Caduceus, launch: Any, tmp_path: Path, hook: Hook
) -> None:
    assert "notifier" in SERVICES
    url = f"{hook.url}/svc?token=SERVICE-TOKEN"
    rules = {
        "ct": rule("CT", on_reception=True, webhook_url=url, webhook_payload='"rule": "@rule@"')
    }
    cfg = config(tmp_path, rules)
    store.save(receiver.engine(), cfg, "test")
    notifier = launch("notifier")
    route(receiver, tmp_path / "ct", cfg, count=1, modality="CT")
    deadline = time.monotonic() + 60
    while not hook.requests and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hook.bodies() == [{"rule": "ct"}]
    assert notifier.stop() == 0
    log = notifier.log()
    assert "notifier started" in log and "notifier stopped" in log
    assert "SERVICE-TOKEN" not in log
