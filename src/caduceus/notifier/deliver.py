"""Sending the pending notifications that are due, with retries, and recording every outcome.

A notification is claimed before it is sent (its next attempt moved `CLAIM` ahead), so two
notifiers never send it at the same moment, and one that dies while sending leaves it to be
sent again once the claim runs out: delivery is at least once. A failed attempt is retried
after an exponential, jittered delay, up to `MAX_ATTEMPTS`; a template that cannot be rendered
or a rule that no longer asks for the notification fails at once. The final outcome is an
event: ``notification.sent`` or ``notification.failed``.

Templates are rendered at each attempt, with the configuration of that moment.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, and_, or_, select, update

from caduceus.core.config.models import Config
from caduceus.core.db.engine import writer
from caduceus.core.db.models import NOTIFICATIONS
from caduceus.core.events import record_event
from caduceus.notifier import render, send
from caduceus.notifier.context import Gone, template_context
from caduceus.notifier.tuning import CLAIM, DELIVERY_BATCH, FIRST_DELAY, MAX_ATTEMPTS, MAX_DELAY

log = logging.getLogger("caduceus.notifier")

MAX_ERROR = 2000


def retry_delay(attempt: int) -> timedelta:
    """After the n-th failed attempt: 10 s, 20 s, 40 s, ... up to an hour, randomised to
    50-100% so that many notifications to one dead server do not come back all at once."""
    raw = min(MAX_DELAY.total_seconds(), FIRST_DELAY.total_seconds() * 2 ** max(0, attempt - 1))
    return timedelta(seconds=raw * random.uniform(0.5, 1.0))


@dataclass
class Outcome:
    id: int
    rule: str
    channel: str
    trigger: str
    state: str  # sent, failed, pending (to be retried), lost (another notifier has it)
    attempts: int
    error: str | None


def deliver_due(
    engine: Engine,
    config: Config,
    now: datetime | None = None,
    *,
    limit: int = DELIVERY_BATCH,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Outcome]:
    """Attempt up to `limit` due notifications; return what became of each."""
    now = now or datetime.now(UTC)
    engine = writer(engine)
    with engine.connect() as conn:
        due = conn.execute(
            select(NOTIFICATIONS)
            .where(
                NOTIFICATIONS.c.state == "pending",
                or_(
                    NOTIFICATIONS.c.next_attempt_at.is_(None),
                    NOTIFICATIONS.c.next_attempt_at <= now,
                ),
            )
            .order_by(NOTIFICATIONS.c.id)
            .limit(limit)
        ).all()
    outcomes = []
    started = time.monotonic()
    for row in due:
        if should_stop():
            break
        # The batch's clock moves on: sends before this one may have taken minutes, and a
        # claim stamped with the batch's start could already be expired when it is taken.
        current = now + timedelta(seconds=time.monotonic() - started)
        if not _claim(engine, row, current):
            continue
        outcomes.append(_attempt(engine, config, row, current))
    return outcomes


def _claim(engine: Engine, row: Row[Any], now: datetime) -> bool:
    with engine.begin() as conn:
        return (
            conn.execute(
                update(NOTIFICATIONS)
                .where(
                    and_(
                        NOTIFICATIONS.c.id == row.id,
                        NOTIFICATIONS.c.state == "pending",
                        NOTIFICATIONS.c.attempts == row.attempts,
                        or_(
                            NOTIFICATIONS.c.next_attempt_at.is_(None),
                            NOTIFICATIONS.c.next_attempt_at <= now,
                        ),
                    )
                )
                # The attempt counts from the claim: one that kills the notifier (a template
                # that exhausts memory, a hang) still ends in "failed" after MAX_ATTEMPTS.
                .values(next_attempt_at=now + CLAIM, attempts=row.attempts + 1)
            ).rowcount
            == 1
        )


def _attempt(engine: Engine, config: Config, row: Row[Any], now: datetime) -> Outcome:
    note: str | None = None
    try:
        note = _send(engine, config, row, now)
        error, permanent = None, False
    except render.TemplateProblem as exc:
        error, permanent = f"template: {exc}", True
    except Gone as exc:
        error, permanent = str(exc), True
    except send.DeliveryError as exc:
        error, permanent = str(exc), exc.permanent
    except Exception as exc:  # a bug must not stop the other notifications
        # No traceback: its frames could hold a webhook URL or a rendered payload.
        log.error("notification %d: unexpected %s", row.id, type(exc).__name__)
        error, permanent = f"internal error: {type(exc).__name__}", False
    return _record(engine, config, row, now, error, permanent, note)


def _send(engine: Engine, config: Config, row: Row[Any], now: datetime) -> str | None:
    rule = config.rules.get(row.rule)
    if rule is None:
        raise send.DeliveryError(f"rule {row.rule!r} is no longer configured", permanent=True)
    settings = rule.notification
    with engine.connect() as conn:
        context = template_context(conn, row, config.settings.notifications_include_phi, now)
    if row.channel == "webhook":
        if not settings.webhook_url:
            raise send.DeliveryError("the rule no longer has a webhook", permanent=True)
        if settings.webhook_payload_body:
            # mercure's notification_payload_body: rendered as text, offered to the payload
            # as {{ body }} (the payload's rendering keeps it valid inside a JSON string).
            body_text = render.render_text(settings.webhook_payload_body, context)
            context = {**context, "body": body_text}
        body = render.render_payload(settings.webhook_payload, context)
        ca_bundle = settings.webhook_ca_bundle or config.settings.webhook_ca_bundle
        send.post_webhook(settings.webhook_url, body, ca_bundle=ca_bundle)
        return None
    if row.channel == "email":
        if not settings.email:
            raise send.DeliveryError("the rule no longer has mail recipients", permanent=True)
        subject = render.render_subject(settings.email_subject, context)
        if settings.email_type == "html":
            text = render.render_html(settings.email_body, context)
        else:
            text = render.render_text(settings.email_body, context)
        refused = send.send_mail(
            config.settings.smtp, settings.email, subject, text, settings.email_type == "html"
        )
        return f"refused by the server: {', '.join(refused)}" if refused else None
    raise send.DeliveryError(f"unknown channel {row.channel!r}", permanent=True)


def _where(config: Config, row: Row[Any]) -> str:
    rule = config.rules.get(row.rule)
    if rule is None:
        return ""
    if row.channel == "webhook" and rule.notification.webhook_url:
        return f" to {send.origin(rule.notification.webhook_url)}"
    if row.channel == "email" and rule.notification.email:
        return f" to {len(rule.notification.email)} recipient(s)"
    return ""


def _record(
    engine: Engine,
    config: Config,
    row: Row[Any],
    now: datetime,
    error: str | None,
    permanent: bool,
    note: str | None,
) -> Outcome:
    """Record one attempt to send a notification: sent, failed for good (a permanent error,
    or the last attempt), or pending with its next attempt after the backoff.

    The update is guarded by the attempt count this notifier claimed: if another notifier
    took the row over meanwhile, its record stands and this one reports "lost". The error
    text is scrubbed of the rule's secrets before it is stored or logged.
    """
    attempts = row.attempts + 1
    if error is not None:
        # Belt and braces: whatever produced the message, the rule's secrets stay out.
        error = _scrub(config, row, error)[:MAX_ERROR]
    what = f"{row.channel} for rule {row.rule!r} ({row.trigger})"
    details = {
        "notification": row.id,
        "rule": row.rule,
        "channel": row.channel,
        "trigger": row.trigger,
        "attempts": attempts,
    }
    with engine.begin() as conn:
        events: list[tuple[str, str, str]] = []
        mine = and_(NOTIFICATIONS.c.id == row.id, NOTIFICATIONS.c.attempts == attempts)
        if error is None:
            state = "sent"
            values: dict[str, Any] = {
                "state": state,
                "attempts": attempts,
                "sent_at": now,
                "next_attempt_at": None,
                "last_error": note,
            }
            events.append(("notification.sent", f"{what} sent{_where(config, row)}", "info"))
        elif permanent or attempts >= MAX_ATTEMPTS:
            state = "failed"
            values = {
                "state": state,
                "attempts": attempts,
                "next_attempt_at": None,
                "last_error": error,
            }
            events.append(
                (
                    "notification.failed",
                    f"{what} failed after {attempts} attempt(s): {error}",
                    "error",
                )
            )
        else:
            state = "pending"
            values = {
                "attempts": attempts,
                "next_attempt_at": now + retry_delay(attempts),
                "last_error": error,
            }
        if not conn.execute(update(NOTIFICATIONS).where(mine).values(**values)).rowcount:
            # Another notifier took the row over (our claim ran out): its word counts.
            return Outcome(row.id, row.rule, row.channel, row.trigger, "lost", attempts, error)
        for kind, message, severity in events:
            record_event(
                conn, kind, message, severity=severity, task_id=row.task_id, details=details
            )
    if state == "sent":
        log.info("notification %d: %s sent", row.id, what)
    elif state == "failed":
        log.warning("notification %d: %s failed: %s", row.id, what, error)
    else:
        log.info("notification %d: attempt %d failed (%s); will retry", row.id, attempts, error)
    return Outcome(row.id, row.rule, row.channel, row.trigger, state, attempts, error)


def _scrub(config: Config, row: Row[Any], text: str) -> str:
    secrets = []
    password = config.settings.smtp.password.get_secret_value()
    if password:
        secrets.append(password)
    rule = config.rules.get(row.rule)
    if rule is not None and rule.notification.webhook_url:
        secrets.extend(send.url_secrets(rule.notification.webhook_url))
    return send.redact(text, sorted(secrets, key=len, reverse=True))
