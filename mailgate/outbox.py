"""Delivery of queued outbox rows: to an SMTP relay, or to a local Maildir when none is set.

Temporary failures retry with exponential back-off; a permanent refusal (5xx) or too many
attempts marks the row dead and writes an event, so nothing fails silently.
"""

from __future__ import annotations

import email.header
import logging
import mailbox
import quopri
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import case, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mailgate import tickets
from mailgate.config import Outgoing as OutgoingSettings
from mailgate.models import Outbox, OutboxState, Ticket

log = logging.getLogger("mailgate.outbox")


class PermanentFailure(Exception):
    """The relay refused the mail for good (5xx)."""


class Transport(Protocol):
    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None: ...

    def close(self) -> None:
        """Let go of any connection; the next deliver() opens a new one."""


def _header(name: str, value: str) -> bytes:
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} contains a line break")
    if value.isascii() and len(value) < 900:
        return f"{name}: {value}\r\n".encode("ascii")
    # RFC 2047 words for non-ASCII text (addresses were encoded when queued), folded.
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


def render(row: Outbox) -> bytes:
    """The outbox row as RFC 5322 bytes, CRLF line ends.

    Written out directly: the stdlib's EmailMessage would parse every header again, which cost
    more than delivering the mail.
    """
    body = row.body.replace("\r\n", "\n").replace("\n", "\r\n")
    if body.isascii() and all(len(line) < 990 for line in body.split("\r\n")):
        encoding, payload = "7bit", body.encode("ascii")
    else:
        encoding = "quoted-printable"
        payload = quopri.encodestring(body.encode("utf-8")).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = b"".join(_header(name, str(value)) for name, value in row.headers.items())
    head += b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    head += f"Content-Transfer-Encoding: {encoding}\r\n".encode()
    return head + b"\r\n" + payload


class MaildirSink:
    """Outgoing mail lands in a Maildir a person can open with any mail client."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # Maildir creates only its last level
        box = mailbox.Maildir(self.path, create=True)
        box.add(data)

    def close(self) -> None:
        pass


class SmtpRelay:
    """Delivers through the configured relay, keeping one connection open while there is mail
    to deliver; the caller closes it when the queue is empty."""

    def __init__(self, settings: OutgoingSettings, timeout: float = 30) -> None:
        self.settings = settings
        self.timeout = timeout
        self._client: smtplib.SMTP | None = None
        self._tls: ssl.SSLContext | None = None

    def tls_context(self) -> ssl.SSLContext:
        # Made once: loading the system's CA certificates costs more than delivering a mail.
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def connect(self) -> smtplib.SMTP:
        """A logged-in connection to the relay (also used by check-config)."""
        s = self.settings
        client: smtplib.SMTP
        if s.relay_security == "tls":
            client = smtplib.SMTP_SSL(s.relay_host, s.relay_port, timeout=self.timeout, context=self.tls_context())
        else:
            client = smtplib.SMTP(s.relay_host, s.relay_port, timeout=self.timeout)
        try:
            client.ehlo()
            if s.relay_security == "starttls":
                client.starttls(context=self.tls_context())
                client.ehlo()
            if s.relay_user:
                client.login(s.relay_user, s.relay_password)
        except BaseException:
            client.close()
            raise
        return client

    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        for attempt in (1, 2):
            if self._client is None:
                self._client = self.connect()
            try:
                refused = self._client.sendmail(mail_from, recipients, data)
                break
            except smtplib.SMTPServerDisconnected:
                self.close()  # the relay dropped the idle connection: reconnect once
                if attempt == 2:
                    raise
            except smtplib.SMTPRecipientsRefused as exc:
                self._reset()
                codes = [code for code, _ in exc.recipients.values()]
                if all(code >= 500 for code in codes):
                    raise PermanentFailure(f"all recipients refused: {exc.recipients}") from exc
                raise
            except smtplib.SMTPResponseException as exc:
                self._reset()
                if exc.smtp_code >= 500:
                    raise PermanentFailure(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
                raise
            except OSError:
                self.close()
                raise
        if refused:
            log.warning("relay refused some recipients: %s", refused)

    def _reset(self) -> None:
        try:
            if self._client is not None:
                self._client.rset()
        except (smtplib.SMTPException, OSError):
            self.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()


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


# A claimed row is not due again before this: time enough to deliver it. If the sender dies
# while delivering, the row comes back after it (a mail may then go out twice: never zero times).
CLAIM_SECONDS = 600


def claim_due(session: Session, now: datetime, limit: int) -> list[Outbox]:
    """Take up to `limit` due rows for this sender and commit at once, so no transaction (and, on
    SQLite, no write lock) stays open while mail travels. SKIP LOCKED: on PostgreSQL two senders
    never take the same row."""
    rows = list(
        session.scalars(
            select(Outbox)
            .where(Outbox.state == OutboxState.QUEUED, Outbox.next_attempt_at <= now)
            # Requesters first: under a burst, acknowledgements overtake the dispatcher's notices.
            .order_by(case((Outbox.kind == "ack", 0), else_=1), Outbox.next_attempt_at, Outbox.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for row in rows:
        row.attempts += 1
        row.next_attempt_at = now + timedelta(seconds=CLAIM_SECONDS)
    session.commit()
    return rows


# Outcomes are committed this many rows at a time: one write per mail would make the sender
# queue for the database's write lock as often as ingest() does. If the process dies between a
# delivery and its commit, those few mails go out again after CLAIM_SECONDS (never zero times).
COMMIT_EVERY = 10


def deliver_due(
    session: Session, transport: Transport, now: datetime, max_attempts: int, limit: int = 100
) -> FlushReport:
    """Deliver up to `limit` due rows over `transport` (left open for the next call)."""
    report = FlushReport()
    rows = claim_due(session, now, limit)
    relay_down: Exception | None = None
    try:
        for done, row in enumerate(rows, start=1):
            dead = report.dead
            relay_down = _attempt(session, transport, row, now, max_attempts, report, relay_down) or relay_down
            # A dead row wrote an event, and on SQLite any statement holds the write lock until
            # the commit: commit at once rather than hold it while further mails travel.
            if done % COMMIT_EVERY == 0 or report.dead != dead:
                session.commit()
    except SQLAlchemyError:
        session.rollback()  # the database failed: its error is the one to report
        raise
    except BaseException:
        session.commit()  # what was delivered before the failure stays delivered
        raise
    session.commit()
    return report


# The relay itself is unreachable or refuses us (not this mail): the rest of the round waits too.
RELAY_DOWN = (OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, smtplib.SMTPAuthenticationError)


def _attempt(
    session: Session,
    transport: Transport,
    row: Outbox,
    now: datetime,
    max_attempts: int,
    report: FlushReport,
    relay_down: Exception | None = None,
) -> Exception | None:
    """Deliver `row` and record the outcome; returns the error if the relay is down. With
    `relay_down` given, the row is not tried: a relay that timed out for one mail would make
    each of the rest wait out the timeout again (50 rows, 30 s each: longer than their claim)."""
    try:
        data = render(row)
    except (ValueError, TypeError, UnicodeError) as exc:
        # A header that cannot be a header (a line break in it): no retry can fix this row, and
        # it must not stay first in the queue, blocking every mail behind it.
        _dead(session, row, now, f"cannot be rendered as a mail: {exc}")
        report.dead += 1
        return None
    try:
        if relay_down is not None:
            raise relay_down
        transport.deliver(row.mail_from, list(row.recipients), data)
    except PermanentFailure as exc:
        _dead(session, row, now, f"refused: {exc}")
        report.dead += 1
        return None
    except (smtplib.SMTPException, OSError) as exc:
        row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        if row.attempts >= max_attempts:
            _dead(session, row, now, f"gave up after {row.attempts} attempts: {row.last_error}")
            report.dead += 1
        else:
            row.next_attempt_at = now + backoff(row.attempts)
            log.info("outbox id=%s msgid=%s retry at %s: %s", row.id, row.message_id, row.next_attempt_at, exc)
            report.retried += 1
        return exc if isinstance(exc, RELAY_DOWN) else None
    row.state, row.sent_at, row.last_error = OutboxState.SENT, now, ""
    log.info("outbox id=%s msgid=%s kind=%s sent to %s", row.id, row.message_id, row.kind, row.rcpt_key)
    report.sent += 1
    return None


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
