"""Delivery of queued outbox rows: to an SMTP relay, or to a local Maildir when none is set.

Temporary failures retry with exponential back-off; a permanent refusal (5xx) or too many
attempts marks the row dead and writes an event, so nothing fails silently.
"""

from __future__ import annotations

import logging
import mailbox
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate import tickets
from mailgate.config import Outgoing as OutgoingSettings
from mailgate.models import Outbox, OutboxState, Ticket

log = logging.getLogger("mailgate.outbox")


class PermanentFailure(Exception):
    """The relay refused the mail for good (5xx)."""


class Transport(Protocol):
    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None: ...


def render(row: Outbox) -> bytes:
    """The outbox row as RFC 5322 bytes, CRLF line ends."""
    message = EmailMessage(policy=SMTP)
    for name, value in row.headers.items():
        message[name] = value
    message.set_content(row.body)
    return message.as_bytes()


class MaildirSink:
    """Outgoing mail lands in a Maildir a person can open with any mail client."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # Maildir creates only its last level
        box = mailbox.Maildir(self.path, create=True)
        box.add(data)


class SmtpRelay:
    def __init__(self, settings: OutgoingSettings, timeout: float = 30) -> None:
        self.settings = settings
        self.timeout = timeout

    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        s = self.settings
        context = ssl.create_default_context()
        client_class = smtplib.SMTP_SSL if s.relay_security == "tls" else smtplib.SMTP
        kwargs = {"context": context} if s.relay_security == "tls" else {}
        try:
            with client_class(s.relay_host, s.relay_port, timeout=self.timeout, **kwargs) as client:
                if s.relay_security == "starttls":
                    client.starttls(context=context)
                if s.relay_user:
                    client.login(s.relay_user, s.relay_password)
                refused = client.sendmail(mail_from, recipients, data)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(code >= 500 for code in codes):
                raise PermanentFailure(f"all recipients refused: {exc.recipients}") from exc
            raise
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                raise PermanentFailure(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
            raise
        if refused:
            log.warning("relay refused some recipients: %s", refused)


def transport_for(settings: OutgoingSettings, maildir: Path) -> Transport:
    return SmtpRelay(settings) if settings.relay_host else MaildirSink(maildir)


@dataclass
class FlushReport:
    sent: int = 0
    retried: int = 0
    dead: int = 0


def backoff(attempts: int) -> timedelta:
    """1, 2, 4 … minutes, at most six hours between attempts."""
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), 360))


def deliver_due(
    session: Session, transport: Transport, now: datetime, max_attempts: int, limit: int = 100
) -> FlushReport:
    """Deliver up to `limit` rows that are due; one commit per row so a crash repeats at most one."""
    report = FlushReport()
    while True:
        row = session.scalar(
            select(Outbox)
            .where(Outbox.state == OutboxState.QUEUED, Outbox.next_attempt_at <= now)
            .order_by(Outbox.next_attempt_at, Outbox.id)
            .limit(1)
            # Two senders on PostgreSQL never take the same row (ignored by SQLite's single writer).
            .with_for_update(skip_locked=True)
        )
        if row is None or report.sent + report.retried + report.dead >= limit:
            session.rollback()
            return report
        _attempt(session, transport, row, now, max_attempts, report)
        session.commit()


def _attempt(
    session: Session, transport: Transport, row: Outbox, now: datetime, max_attempts: int, report: FlushReport
) -> None:
    row.attempts += 1
    try:
        data = render(row)
    except (ValueError, TypeError, UnicodeError) as exc:
        # A header that cannot be a header (a line break in it): no retry can fix this row, and
        # it must not stay first in the queue, blocking every mail behind it.
        _dead(session, row, now, f"cannot be rendered as a mail: {exc}")
        report.dead += 1
        return
    try:
        transport.deliver(row.mail_from, list(row.recipients), data)
    except PermanentFailure as exc:
        _dead(session, row, now, f"refused: {exc}")
        report.dead += 1
    except (smtplib.SMTPException, OSError) as exc:
        row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        if row.attempts >= max_attempts:
            _dead(session, row, now, f"gave up after {row.attempts} attempts: {row.last_error}")
            report.dead += 1
        else:
            row.next_attempt_at = now + backoff(row.attempts)
            log.info("outbox id=%s msgid=%s retry at %s: %s", row.id, row.message_id, row.next_attempt_at, exc)
            report.retried += 1
    else:
        row.state, row.sent_at, row.last_error = OutboxState.SENT, now, ""
        log.info("outbox id=%s msgid=%s kind=%s sent to %s", row.id, row.message_id, row.kind, row.rcpt_key)
        report.sent += 1


def _dead(session: Session, row: Outbox, now: datetime, reason: str) -> None:
    row.state, row.last_error = OutboxState.DEAD, reason[:2000]
    ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
    tickets.record(
        session,
        ticket,
        actor="mailgate",
        action="delivery_failed",
        channel="outbox",
        at=now,
        new=f"{row.kind}: {reason}",
    )
    log.error("outbox id=%s msgid=%s dead: %s", row.id, row.message_id, reason)
