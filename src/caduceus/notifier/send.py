"""Delivering one notification: a webhook POST with httpx, or a mail with smtplib.

Each attempt either returns or raises `DeliveryError`, whose message is fit for the database,
the events and the log: a webhook URL is shown as its origin (scheme, host, port) only, since
its path, query or user part often is the credential, and the SMTP password never appears.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import httpx

from caduceus import __version__
from caduceus.core.config.models import SmtpSettings

WEBHOOK_TIMEOUT = 10.0
SMTP_TIMEOUT = 30.0
REDACTED = "***"


class DeliveryError(Exception):
    """An attempt that failed. `permanent`: trying again cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def origin(url: str) -> str:
    """scheme://host[:port] of a URL, without user, path, query or fragment."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "(an invalid URL)"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be credentials, longest first, for `redact`."""
    found = [url]
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return found
    raw_path = parsed.raw_path.decode("ascii", "replace")
    for part in (
        parsed.userinfo.decode("ascii", "replace"),
        parsed.password or "",
        parsed.username,
        raw_path if raw_path not in ("", "/") else "",
        raw_path.split("?", 1)[0] if raw_path not in ("", "/") else "",
        parsed.query.decode("ascii", "replace"),
        parsed.fragment,
    ):
        if part and len(part) >= 3:
            found.append(part)
    return sorted(set(found), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class _OriginsOnly(logging.Filter):
    """httpx logs every request with its full URL at INFO: keep only the origin."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                origin(str(a)) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


def _guard_httpx_log() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _OriginsOnly) for f in logger.filters):
        logger.addFilter(_OriginsOnly())


_guard_httpx_log()


def _verification(ca_bundle: str) -> ssl.SSLContext | bool:
    """How the webhook server's certificate is checked: against the system's trust store, or
    against the CAs of a bundle (a site's own CA) when one is configured. Never not at all."""
    if not ca_bundle:
        return True
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise DeliveryError(f"the webhook CA bundle {ca_bundle} cannot be used: {reason}") from None


def post_webhook(
    url: str, body: bytes, timeout: float = WEBHOOK_TIMEOUT, ca_bundle: str = ""
) -> None:
    """POST the JSON body; anything but a 2xx answer is a failure (redirects are not followed).
    An https server's certificate is checked against ca_bundle (a PEM file) if given."""
    where = origin(url)
    secrets = url_secrets(url)
    verify = _verification(ca_bundle)
    try:
        response = httpx.post(
            url,
            content=body,
            verify=verify,
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"caduceus/{__version__}",
            },
            timeout=timeout,
        )
    except httpx.TimeoutException:
        raise DeliveryError(f"{where} did not answer within {timeout:g} s") from None
    except httpx.InvalidURL:
        raise DeliveryError("the webhook URL is invalid", permanent=True) from None
    except httpx.UnsupportedProtocol:
        raise DeliveryError(
            "the webhook URL's scheme is not http or https", permanent=True
        ) from None
    except httpx.HTTPError as exc:
        detail = redact(str(exc), secrets)
        raise DeliveryError(f"cannot reach {where}: {type(exc).__name__}: {detail}") from None
    if not 200 <= response.status_code < 300:
        phrase = redact(response.reason_phrase, secrets)
        raise DeliveryError(f"{where} answered HTTP {response.status_code} {phrase}".rstrip())


def build_mail(
    smtp: SmtpSettings, recipients: list[str], subject: str, body: str, html: bool
) -> EmailMessage:
    message = EmailMessage()
    try:
        message["From"] = smtp.sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now(UTC))
        domain = smtp.sender.rpartition("@")[2] or "localhost"
        message["Message-ID"] = make_msgid("caduceus", domain=domain)
        message.set_content(body, subtype="html" if html else "plain")
    except (ValueError, TypeError) as exc:
        raise DeliveryError(f"the mail cannot be built: {exc}", permanent=True) from None
    return message


def send_mail(
    smtp: SmtpSettings,
    recipients: list[str],
    subject: str,
    body: str,
    html: bool,
    timeout: float = SMTP_TIMEOUT,
) -> list[str]:
    """Send one mail to all recipients; returns the recipients the server refused (if some
    were accepted). STARTTLS, when configured, is required: the login never goes in clear."""
    if not smtp.host:
        raise DeliveryError("no mail server is configured (settings.smtp.host)")
    message = build_mail(smtp, recipients, subject, body, html)
    password = smtp.password.get_secret_value()
    secrets = [password] if password else []
    server = f"{smtp.host}:{smtp.port}"
    context = ssl.create_default_context()
    try:
        client: smtplib.SMTP
        if smtp.security == "tls":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=context)
            if smtp.username:
                client.login(smtp.username, password)
            refused = client.send_message(message)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(
            redact(f"{server} refused the login of {smtp.username!r}: {_reply(exc)}", secrets)
        ) from None
    except smtplib.SMTPNotSupportedError:
        raise DeliveryError(f"{server} does not offer STARTTLS or AUTH as configured") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(
            f"{server} refused every recipient ({', '.join(sorted(exc.recipients))})"
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(redact(f"{server} answered {_reply(exc)}", secrets)) from None
    except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
        raise DeliveryError(
            redact(f"mail through {server} failed: {type(exc).__name__}: {exc}", secrets)
        ) from None
    return sorted(refused)


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{exc.smtp_code} {text}".strip()
