"""The outbox: outgoing mail as rows queued in the caller's transaction, claimed by a sender,
and the outcome of each delivery recorded on its row.

Temporary failures retry with exponential back-off; a permanent refusal (5xx) or too many
attempts marks the row dead and writes an event, so nothing fails silently.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import re
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mailgate import reply_tokens, retry, tickets, tokens
from mailgate import subject as subjects
from mailgate.addresses import fold_address
from mailgate.config import Settings
from mailgate.headers import LOOP_HEADER
from mailgate.models import Outbox, OutboxState, Person, Ticket
from mailgate.outgoing.compose import Templates, fit_body, render, shorten
from mailgate.storage import AttachmentStore

log = logging.getLogger("mailgate.outbox")


class PermanentFailure(Exception):
    """The relay refused the mail for good (5xx)."""


class Transport(Protocol):
    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None: ...

    def close(self) -> None:
        """Let go of any connection; the next deliver() opens a new one."""

    def abort(self) -> None:
        """From another thread, at shutdown: cut the connection a delivery may hang on."""


class AutoSubmitted(StrEnum):
    """RFC 3834's Auto-Submitted, carried by every mail mailgate sends, so that no one's robot
    answers it and receivers can tell a reply to their mail from a notification."""

    GENERATED = "auto-generated"  # not caused by one mail: the dispatcher's notice, reminders, reports
    REPLIED = "auto-replied"  # the answer to one incoming mail: the acknowledgement, a command receipt
    # A person's words the desk passes on (a relayed answer): no robot wrote them. Their
    # out-of-office is still asked not to answer (X-Auto-Response-Suppress), and is stored as
    # automatic mail if it does.
    NO = "no"


@dataclass(frozen=True)
class Attached:
    """A stored file (storage.AttachmentStore) that a queued mail carries."""

    sha256: str
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class OutgoingMail:
    """Everything about one mail to queue, apart from its text."""

    kind: str
    occasion: str
    # None: mail about no ticket (admission's refusal): no tag, no reply token, so an answer to
    # it is a new mail like any other.
    ticket: Ticket | None
    to: Person
    template: str
    context: dict[str, Any]
    auto_submitted: AutoSubmitted
    in_reply_to: str | None = None
    # The mail it answers was proven to come from `to` (see Outbox.rcpt_proven).
    rcpt_proven: bool = False
    language: str = "en"  # of the templates and dates (see mailgate/languages.py)
    # Message-IDs (without <>) of the earlier mail of the thread, oldest first: References
    # holds them before in_reply_to, so the mail threads in the recipient's client.
    references: tuple[str, ...] = ()
    # The display name of From and Reply-To (empty: the desk's), e.g. "Alice via IT Help Desk".
    from_name: str = ""
    attachments: tuple[Attached, ...] = ()  # files it carries, chosen and bounded by the caller


_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


# The automatic answers to one incoming mail that limits.acks_per_sender counts together: an
# acknowledgement, and admission's refusal (a robot refused is answered no more often).
ANSWER_KINDS = ("ack", "refused")


def acks_recently(
    session: Session, mailbox: str, now: datetime, window_minutes: int, *, proven_only: bool = False
) -> int:
    """Acknowledgements (and refusals) queued to `mailbox` (a folded address, see
    addresses.fold_address) within the window; with `proven_only`, only those answering mail
    proven to come from it."""
    return queued_recently(session, ANSWER_KINDS, mailbox, now, window_minutes, proven_only=proven_only)


def queued_recently(
    session: Session,
    kinds: Sequence[str],
    mailbox: str,
    now: datetime,
    window_minutes: int,
    *,
    proven_only: bool = False,
) -> int:
    """Mail of `kinds` queued to `mailbox` (a folded address) within the window: what every
    automatic answer to a From nobody proved is limited by, per mailbox."""
    since = now - timedelta(minutes=window_minutes)
    query = select(func.count(Outbox.id)).where(
        Outbox.kind.in_(kinds), Outbox.rcpt_key == mailbox, Outbox.created_at >= since
    )
    if proven_only:
        query = query.where(Outbox.rcpt_proven.is_(True))
    return session.scalar(query) or 0


def queue(
    session: Session,
    settings: Settings,
    templates: Templates,
    secret: bytes,
    mail: OutgoingMail,
    now: datetime,
    *,
    ticket_is_new: bool = False,
) -> Outbox | None:
    """Render `mail` and add it to the outbox; None if this occasion was already queued.

    ticket_is_new: the ticket was opened in this transaction, so nothing can have been queued
    for it yet (saves a query on every new ticket).
    """
    if not ticket_is_new and session.scalar(select(Outbox.id).where(Outbox.occasion == mail.occasion)):
        return None
    number = mail.ticket.number if mail.ticket is not None else None
    if mail.to.undeliverable_since is not None:
        log.info("not queuing %s for ticket %s: %s is undeliverable", mail.kind, number, mail.to.address)
        return None
    if not mail.to.address.isascii():
        # An RFC 6532 address needs SMTPUTF8 end to end; we do not send it rather than mangle it.
        log.warning("not queuing %s for ticket %s: %s needs SMTPUTF8", mail.kind, number, mail.to.address)
        return None
    prefix = settings.tickets.tag_prefix
    support = settings.addresses.support
    domain = support.partition("@")[2]
    if number is None:  # callers pass ticket_is_new only with a ticket: its occasion was looked up above
        return _queue_without_ticket(session, settings, templates, mail, now)
    # A new ticket has had no token replaced yet (saves a query on every new ticket).
    generation = 0 if ticket_is_new else reply_tokens.current(session, mail.ticket.id, mail.to.id)
    token = tokens.make_token(secret, number, mail.to.id, generation)
    context = {
        "ticket": mail.ticket,
        "tag": subjects.format_tag(prefix, number),
        "prefix": prefix,
        "recipient": mail.to,
        "desk_name": settings.addresses.display_name,
        **mail.context,
    }
    subject, body = templates.render(mail.template, context, mail.language)
    # Bidi overrides from the request's subject would make "txt.exe" read "exe.txt" in a client.
    subject = shorten(_BIDI.sub("", subject), settings.outgoing.max_subject_chars)
    # One occasion per kind and ticket (ack:12) has the kind for its purpose; a kind that can
    # recur on a ticket for one person (a breaker warning per trip) also names the occasion, or
    # two of them would share one Message-ID.
    purpose = mail.kind
    if mail.occasion != f"{mail.kind}:{number}":
        purpose += "-" + hashlib.sha256(mail.occasion.encode()).hexdigest()[:10]
    message_id = tokens.message_id(token, purpose, domain)
    # A relayed mail names its writer, whose name the sender chose: no bidi overrides in it either.
    from_name = _BIDI.sub("", mail.from_name) or settings.addresses.display_name
    headers: dict[str, str] = {
        "From": email.utils.formataddr((from_name, support)),
        "To": email.utils.formataddr((mail.to.name, mail.to.address)),
        "Subject": subject if subjects.find_tag(prefix, subject) else subjects.tagged_subject(prefix, number, subject),
        "Message-ID": message_id,
        "Date": email.utils.format_datetime(now),
        "Reply-To": email.utils.formataddr((from_name, tokens.plus_address(support, token))),
        **_automatic_headers(settings, mail),
    }
    row = _row(settings, mail, message_id, headers, body, now)
    session.add(row)  # written with the rest of the transaction: one INSERT for all its outbox rows
    return row


def _queue_without_ticket(
    session: Session, settings: Settings, templates: Templates, mail: OutgoingMail, now: datetime
) -> Outbox | None:
    """Mail about no ticket: no tag, no reply token (an answer to it is a new mail like any
    other), the same loop and auto-reply headers as all our mail. queue() made sure that its
    occasion is new."""
    support = settings.addresses.support
    context = {"recipient": mail.to, "desk_name": settings.addresses.display_name, **mail.context}
    subject, body = templates.render(mail.template, context, mail.language)
    purpose = f"{mail.kind}-{hashlib.sha256(mail.occasion.encode()).hexdigest()[:16]}"
    message_id = tokens.message_id("mailgate", purpose, support.partition("@")[2])
    headers: dict[str, str] = {
        "From": email.utils.formataddr((settings.addresses.display_name, support)),
        "To": email.utils.formataddr((mail.to.name, mail.to.address)),
        "Subject": shorten(_BIDI.sub("", subject), settings.outgoing.max_subject_chars),
        "Message-ID": message_id,
        "Date": email.utils.format_datetime(now),
        **_automatic_headers(settings, mail),
    }
    row = _row(settings, mail, message_id, headers, body, now)
    session.add(row)
    return row


def _automatic_headers(settings: Settings, mail: OutgoingMail) -> dict[str, str]:
    """What every mail of ours carries: our loop mark, RFC 3834's Auto-Submitted, and the
    threading to the mail it answers."""
    headers = {
        LOOP_HEADER: settings.outgoing.loop_id,
        # Ask Exchange and friends not to send out-of-office or read receipts back to us.
        "X-Auto-Response-Suppress": "All",
        "Auto-Submitted": mail.auto_submitted.value,
    }
    if mail.in_reply_to:
        headers["In-Reply-To"] = f"<{mail.in_reply_to}>"
        thread = dict.fromkeys((*mail.references, mail.in_reply_to))  # each once, in order
        headers["References"] = " ".join(f"<{i}>" for i in thread)
    return headers


def _row(
    settings: Settings, mail: OutgoingMail, message_id: str, headers: dict[str, str], body: str, now: datetime
) -> Outbox:
    """The outbox row of a rendered mail, due now; the body cut to fit outgoing.max_mail_bytes."""
    return Outbox(
        ticket_id=mail.ticket.id if mail.ticket is not None else None,
        kind=mail.kind,
        occasion=mail.occasion,
        message_id=message_id,
        mail_from=settings.addresses.support,
        rcpt_key=fold_address(mail.to.address),
        rcpt_proven=mail.rcpt_proven,
        recipients=[mail.to.address],
        headers=headers,
        body=fit_body(headers, body, settings.outgoing.max_mail_bytes),
        attachments=[
            {"sha256": a.sha256, "filename": a.filename, "content_type": a.content_type, "size": a.size}
            for a in mail.attachments
        ],
        state=OutboxState.QUEUED,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )


@dataclass
class FlushReport:
    sent: int = 0
    retried: int = 0
    dead: int = 0


# A claimed row is not due again before this: time enough to deliver it. If the sender dies
# while delivering, the row comes back after it (a mail may then go out twice: never zero times),
# or at once when the daemon that claimed it starts again (release_claims).
CLAIM_SECONDS = 600


def claim_due(session: Session, now: datetime, limit: int, claimer: str | None = None) -> list[Outbox]:
    """Take up to `limit` due rows for this sender and commit at once, so no transaction (and, on
    SQLite, no write lock) stays open while mail travels. SKIP LOCKED: on PostgreSQL two senders
    never take the same row. `claimer` names the daemon (see release_claims)."""
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
        row.claimed_by = claimer
    session.commit()
    return rows


def release_claims(session: Session, claimer: str, now: datetime) -> int:
    """At a daemon's start: the rows its previous run claimed and never settled (it was killed
    mid-delivery) are due again now rather than when their claim runs out. Only that daemon
    uses its name (it holds its spool's lock), so no other sender's work is taken."""
    rows = list(session.scalars(select(Outbox).where(Outbox.state == OutboxState.QUEUED, Outbox.claimed_by == claimer)))
    for row in rows:
        row.next_attempt_at, row.claimed_by = now, None
    session.commit()
    return len(rows)


# Outcomes are committed this many rows at a time: one write per mail would make the sender
# queue for the database's write lock as often as ingest() does. If the process dies between a
# delivery and its commit, those few mails go out again after CLAIM_SECONDS (never zero times).
COMMIT_EVERY = 10


def deliver_due(
    session: Session,
    transport: Transport,
    now: datetime,
    max_attempts: int,
    limit: int = 100,
    claimer: str | None = None,
    store: AttachmentStore | None = None,
) -> FlushReport:
    """Deliver up to `limit` due rows over `transport` (left open for the next call); the
    files rows carry are read from `store`."""
    report = FlushReport()
    rows = claim_due(session, now, limit, claimer)
    relay_down: Exception | None = None
    try:
        for done, row in enumerate(rows, start=1):
            dead = report.dead
            relay_down = _attempt(session, transport, row, now, max_attempts, report, relay_down, store) or relay_down
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
    store: AttachmentStore | None = None,
) -> Exception | None:
    """Deliver `row` and record the outcome; returns the error if the relay is down. With
    `relay_down` given, the row is not tried: a relay that timed out for one mail would make
    each of the rest wait out the timeout again (50 rows, 30 s each: longer than their claim)."""
    unreadable: OSError | None = None
    try:
        data = render(row, store)
    except OSError as exc:
        # The attachment store cannot be read now (its network mount is away): retried like a
        # relay that failed, without holding up the mails that carry no files.
        data, unreadable = b"", exc
    except Exception as exc:
        # Rendering depends on nothing but the row (and a file that is gone stays gone), so no
        # retry can fix a row that fails it (a line break in a header, a value the header
        # parser chokes on); it must not stay first in the queue, blocking every mail behind
        # it, nor stop the sender.
        _dead(session, row, now, f"cannot be rendered as a mail: {exc}")
        report.dead += 1
        return None
    try:
        if relay_down is not None:
            raise relay_down
        if unreadable is not None:
            raise unreadable
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
            row.next_attempt_at, row.claimed_by = now + retry.OUTBOX.delay(row.attempts), None
            log.info("outbox id=%s msgid=%s retry at %s: %s", row.id, row.message_id, row.next_attempt_at, exc)
            report.retried += 1
        return exc if isinstance(exc, RELAY_DOWN) and exc is not unreadable else None
    row.state, row.sent_at, row.last_error, row.claimed_by = OutboxState.SENT, now, "", None
    log.info("outbox id=%s msgid=%s kind=%s sent to %s", row.id, row.message_id, row.kind, row.recipients[0])
    report.sent += 1
    return None


def _dead(session: Session, row: Outbox, now: datetime, reason: str) -> None:
    row.state, row.last_error, row.claimed_by = OutboxState.DEAD, reason[:2000], None
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
