"""mercure's notification options on a rule: notification_payload_body (offered to the payload
as {{ body }}), and the CA bundle that an https webhook server's certificate is checked against
(webhook_certificate_location), per rule or for every rule. A real series is received and
routed; the webhook is a real HTTPS server on this machine with a certificate from a test CA.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from caduceus.core.config.models import Config
from caduceus.notifier.consume import consume
from caduceus.notifier.deliver import Outcome, deliver_due
from tests.support.clock import later
from tests.support.processes import Caduceus
from tests.support.routing import router_for
from tests.support.sending import send
from tests.support.tls import CertificateAuthority


class _Handler(BaseHTTPRequestHandler):
    server: TlsHook

    def do_POST(self) -> None:
        self.server.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TlsHook(ThreadingHTTPServer):
    """An HTTPS webhook receiver whose certificate a test CA signed."""

    def __init__(self, ca: CertificateAuthority) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        pair = ca.server()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pair.certificate, pair.key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.bodies: list[bytes] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "ca", "webhook")


@pytest.fixture
def hook(ca: CertificateAuthority) -> Iterator[TlsHook]:
    server = TlsHook(ca)
    yield server
    server.shutdown()
    server.server_close()


def deliver(
    receiver: Caduceus, tmp_path: Path, notification: dict[str, Any], **settings: Any
) -> Outcome:
    cfg = Config.model_validate(
        {
            "settings": {"retry_delay": 10, "retry_max": 0, **settings},
            "rules": {
                "ct": {
                    "rule": "@Modality@ == 'CT'",
                    "action": "notification",
                    "notification": {"on_reception": True, **notification},
                }
            },
        }
    )
    send(receiver, tmp_path / "ct", count=1, modality="CT", series_description="AX")
    router_for(receiver).run_pass(cfg, later(61))
    engine = receiver.engine()
    while consume(engine, cfg, later(120)).events:
        pass
    [outcome] = deliver_due(engine, cfg, later(62))
    return outcome


def test_the_rules_ca_bundle_and_payload_body(
    receiver: Caduceus, tmp_path: Path, hook: TlsHook, ca: CertificateAuthority
) -> None:
    outcome = deliver(
        receiver,
        tmp_path,
        {
            "webhook_url": hook.url,
            "webhook_ca_bundle": str(ca.certificate),
            "webhook_payload_body": 'Rule "{{ rule }}" triggered {{ event }}',
            "webhook_payload": '"text": "{{ body }}"',
        },
    )
    assert (outcome.state, outcome.error) == ("sent", None)
    [body] = hook.bodies
    assert json.loads(body) == {"text": 'Rule "ct" triggered RECEIVED'}


def test_the_global_ca_bundle(
    receiver: Caduceus, tmp_path: Path, hook: TlsHook, ca: CertificateAuthority
) -> None:
    outcome = deliver(
        receiver, tmp_path, {"webhook_url": hook.url}, webhook_ca_bundle=str(ca.certificate)
    )
    assert outcome.state == "sent" and len(hook.bodies) == 1


def test_without_the_bundle_the_unknown_ca_is_refused(
    receiver: Caduceus, tmp_path: Path, hook: TlsHook
) -> None:
    outcome = deliver(receiver, tmp_path, {"webhook_url": hook.url})
    assert outcome.state != "sent" and "CERTIFICATE_VERIFY_FAILED" in (outcome.error or "")
    assert hook.bodies == []


def test_a_missing_bundle_is_a_clear_error(
    receiver: Caduceus, tmp_path: Path, hook: TlsHook
) -> None:
    outcome = deliver(
        receiver, tmp_path, {"webhook_url": hook.url, "webhook_ca_bundle": "/nonexistent.pem"}
    )
    assert outcome.state != "sent"
    assert "the webhook CA bundle /nonexistent.pem cannot be used" in (outcome.error or "")
    assert hook.bodies == []
