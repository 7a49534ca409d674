"""ingest(): raw mail in, ticket state out, in one transaction. Every transport calls only this.

The steps, in order: parse (or quarantine) -> dedupe -> classify -> identify the sender ->
thread -> store message and attachments -> create/append/reopen -> queue outgoing mail.
Anything failing after parsing rolls the whole transaction back and is reported as temporary,
so the transport keeps the mail and retries: a mail is never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from mailgate import people, tickets
from mailgate import subject as subjects
from mailgate.app import App
from mailgate.db import describe
from mailgate.ingest import classify, notices, thread
from mailgate.ingest.dedupe import earlier_copy, fingerprint
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome, TemporaryFailure
from mailgate.ingest.parse import ParsedMail, Unparseable, parse
from mailgate.ingest.store import store_message
from mailgate.models import Attachment, MessageKind, Ticket
from mailgate.quarantine import put as put_in_quarantine

__all__ = ["IngestResult", "Outcome", "TemporaryFailure", "describe", "ingest", "quarantine"]

# The spool worker (ingest/spooled.py) still imports quarantine.put by this name.
quarantine = put_in_quarantine

log = logging.getLogger("mailgate.ingest")


@dataclass
class IngestResult:
    outcome: Outcome
    ticket_number: int | None = None
    message_id: str | None = None
    trace: list[dict[str, str]] = field(default_factory=list)
    quarantine_id: int | None = None
    linked_ticket: int | None = None


def ingest(
    app: App,
    raw: bytes,
    source: str,
    envelope_recipients: Sequence[str] = (),
    envelope_sender: str | None = None,
    received_at: datetime | None = None,
) -> IngestResult:
    """Store `raw` (from `source`, e.g. "smtp", "imap:support", "pipe") and act on it.

    `envelope_sender` is the SMTP MAIL FROM when the transport knows it ("" for the null sender
    of bounces and auto-replies). `received_at` is when the mail reached us, if it waited (in the
    listener's spool, during a database outage): the message is stored as received then, and a
    new ticket's clock, its SLA targets included, starts then, not when the backlog was worked
    off. What ingest() changes and sends is dated now.
    """
    now = app.clock.now()
    # Never in the future, whatever another process's clock said.
    arrived = min(now, received_at) if received_at is not None else now
    source = source[:100]
    try:
        mail = parse(raw, app.settings.limits.max_message_bytes, envelope_sender)
    except Unparseable as exc:
        return _quarantined(app, raw, source, str(exc), now)
    except Exception as exc:  # a parser bug on hostile input: the mail waits in quarantine, not in a loop
        log.warning("parser failed on a mail from %s", source, exc_info=log.isEnabledFor(logging.DEBUG))
        return _quarantined(app, raw, source, f"parser failed: {type(exc).__name__}: {exc}", now)
    mail.envelope_sender = envelope_sender
    rcpts = [r.lower() for r in envelope_recipients]
    try:
        result = _apply_with_retry(app, mail, source, rcpts, now, arrived)
    except TemporaryFailure:
        raise
    except DataError as exc:
        # The database refuses a value of this mail (SQLSTATE class 22): retrying cannot help.
        return _quarantined(app, raw, source, f"the database refused a value: {describe(exc)}", now)
    except Exception as exc:
        # One line for the operator (database down, disk full …); the traceback only with -v.
        log.error(
            "ingest failed, rolled back, mail left with the sender: source=%s msgid=<%s>: %s",
            source,
            mail.message_id,
            describe(exc),
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        raise TemporaryFailure(describe(exc)) from exc
    if result.outcome == Outcome.NEW_TICKET:
        app.outbox_changed()  # an acknowledgement and a notice wait: let the sender know now
    evidence = [t["decision"] for t in result.trace if t["step"] in ("token", "references", "tag", "classify")]
    log.info(
        "ingest source=%s msgid=<%s> outcome=%s ticket=%s evidence=%s",
        source,
        mail.message_id,
        result.outcome,
        result.ticket_number,
        "; ".join(evidence) or "-",
    )
    return result


def _quarantined(app: App, raw: bytes, source: str, reason: str, now: datetime) -> IngestResult:
    row_id = put_in_quarantine(app, raw, source, reason, now)
    return IngestResult(Outcome.QUARANTINED, trace=[{"step": "parse", "decision": reason}], quarantine_id=row_id)


def _apply_with_retry(
    app: App, mail: ParsedMail, source: str, rcpts: list[str], now: datetime, arrived: datetime
) -> IngestResult:
    """Run the transaction; a unique-key race with a concurrent ingest is settled by re-running.

    Two daemons may store the same mail (-> duplicate) or create the same new person at once
    (-> the second run finds the person): neither is an error the sender should see.
    """
    for attempt in range(1, 4):
        new_files: list[str] = []
        try:
            try:
                with app.sessions() as session, session.begin():
                    return _apply(session, app, mail, source, rcpts, now, arrived, new_files)
            except BaseException:
                _discard_files(app, new_files)
                raise
        except (IntegrityError, OperationalError) as exc:
            if isinstance(exc, OperationalError) and not _is_conflict(exc):
                raise
            log.info(
                "ingest msgid=<%s>: concurrent transaction (%s), attempt %d", mail.message_id, describe(exc), attempt
            )
            last = exc
    raise TemporaryFailure(describe(last)) from last


def _discard_files(app: App, digests: list[str]) -> None:
    """Remove attachment files a rolled-back transaction wrote, unless a stored row uses them
    (the same file may have been committed by a concurrent mail in the meantime)."""
    if not digests:
        return
    try:
        with app.sessions() as session:
            used = set(session.scalars(select(Attachment.sha256).where(Attachment.sha256.in_(digests))))
    except Exception:  # the database is the reason we are here; leave the files for later
        return
    for digest in set(digests) - used:
        app.store.discard(digest)


def _is_conflict(exc: OperationalError) -> bool:
    """A deadlock or serialization failure on PostgreSQL: running the transaction again is the cure."""
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001")


def _apply(
    session: Session,
    app: App,
    mail: ParsedMail,
    source: str,
    rcpts: list[str],
    now: datetime,
    arrived: datetime,
    new_files: list[str],
) -> IngestResult:
    settings = app.settings
    content = fingerprint(mail)
    key, earlier_ticket, seen = earlier_copy(session, mail, content)
    if seen:
        return IngestResult(
            Outcome.DUPLICATE,
            earlier_ticket,
            mail.message_id,
            [{"step": "dedupe", "decision": f"already stored as {key}"}],
        )
    sender = people.person_for(session, settings, mail.from_addr, mail.from_name, now)
    item = Incoming(mail, key, content, source, now, arrived, sender, new_files=new_files)
    item.note("dedupe", key)

    addresses = settings.addresses
    verdict = classify.classify(mail, addresses.our_senders(), settings.outgoing.loop_id, tuple(addresses.own_list_ids))
    item.reasons = verdict.reasons
    for reason in item.reasons:
        item.note("classify", reason)
    bounce = classify.read_bounce(mail) if verdict.reaction else None

    decision = thread.decide(
        session,
        mail=mail,
        sender=sender,
        secret=app.secret,
        tag_prefix=settings.tickets.tag_prefix,
        envelope_recipients=rcpts,
        extra_ids=bounce.original_ids if bounce else (),
    )
    item.trace += decision.trace

    # Automatic mail never changes a ticket; a reaction (auto-reply, bounce) never opens one.
    if verdict.reaction or (item.reasons and decision.ticket is not None):
        return _auto_generated(session, app, item, decision, bounce)
    ticket = decision.ticket
    if ticket is not None and tickets.is_past_reopen_window(ticket, now, settings.tickets.reopen_window_days):
        item.note("apply", f"ticket {ticket.number} closed beyond the reopen window: follow-up")
        decision.linked, ticket = ticket, None
    if ticket is None:
        return _new_ticket(session, app, item, decision.linked)
    return _reply(session, app, item, ticket)


def _auto_generated(
    session: Session, app: App, item: Incoming, decision: thread.ThreadDecision, bounce: classify.Bounce | None
) -> IngestResult:
    """Stored (on its ticket when it threads), never answered, never changing a status."""
    ticket = decision.ticket
    kind = MessageKind.BOUNCE if bounce else MessageKind.AUTO
    message = store_message(session, app.store, app.settings.limits.max_attachment_bytes, item, ticket, kind)
    if ticket is not None:
        session.flush()  # the event names the message by its id
        tickets.record(
            session,
            ticket,
            actor=item.sender.address,
            action=kind,
            channel=item.source,
            at=item.now,
            message_id=message.id,
            new="; ".join(item.reasons),
        )
        if bounce and decision.token is not None:
            # Only a bounce quoting our signed token, and only for the person that mail went to:
            # anyone can forge a DSN naming any address, but not our signature.
            failed: dict[str, str] = {}
            for failure in bounce.failures:
                if failure.permanent:
                    failed.setdefault(failure.address, f"{failure.status} {failure.diagnostic}".strip())
            people.mark_undeliverable(
                session, decision.token.person_id, failed, ticket=ticket, channel=item.source, now=item.now
            )
    return IngestResult(Outcome(kind.value), ticket.number if ticket else None, item.mail.message_id, item.trace)


def _reply(session: Session, app: App, item: Incoming, ticket: Ticket) -> IngestResult:
    sender = item.sender
    message = store_message(
        session, app.store, app.settings.limits.max_attachment_bytes, item, ticket, MessageKind.REPLY
    )
    tickets.add_participant(session, ticket, sender, "staff" if sender.is_staff else "cc")
    session.flush()  # the event names the message by its id
    tickets.record(
        session, ticket, actor=sender.address, action="message", channel=item.source, at=item.now, message_id=message.id
    )
    tickets.message_added(session, ticket, sender, channel=item.source, now=item.now)
    return IngestResult(Outcome.REPLY, ticket.number, item.mail.message_id, item.trace)


def _new_ticket(session: Session, app: App, item: Incoming, linked: Ticket | None) -> IngestResult:
    settings, mail, sender, now = app.settings, item.mail, item.sender, item.now
    priority = settings.tickets.default_priority
    # People first, the ticket number last: the counter row stays locked until commit, and two
    # transactions that each wait for a person the other inserts would deadlock.
    copied = [
        people.person_for(session, settings, address, name, now)
        for name, address in mail.to + mail.cc
        if address != sender.address and not people.is_own_address(settings, address)
    ]
    notice_to = people.dispatcher(session, settings, now)
    # Asked before anything is written: reads between writes make extra round trips (autoflush).
    no_ack = "automatic mail" if item.reasons else notices.why_no_acknowledgement(session, app, item)
    ticket = tickets.create_ticket(
        session,
        subject=subjects.clean_subject(settings.tickets.tag_prefix, mail.subject),
        requester=sender,
        priority=priority,
        channel=item.source,
        # A mail that waited in the spool: the ticket exists since the mail arrived.
        now=item.arrived,
        first_response_due=item.arrived + timedelta(hours=settings.tickets.first_response_hours[priority]),
    )
    for person in {p.id: p for p in copied if p.id != sender.id}.values():  # each once, in order
        tickets.add_participant(session, ticket, person, "cc", new_ticket=True)
    why_linked = ""
    if linked is not None:
        follow_up = linked.requester_id == sender.id
        why_linked = "follow-up of a closed ticket" if follow_up else "the sender quoted its tag but is not on it"
        kind = "follow-up" if follow_up else "quoted-tag"
        tickets.link(session, ticket, linked, kind, channel=item.source, now=now)
    item.note("apply", f"new ticket {ticket.number}")
    message = store_message(
        session, app.store, settings.limits.max_attachment_bytes, item, ticket, MessageKind.NEW_TICKET
    )
    if no_ack:
        item.note("notify", f"no acknowledgement: {no_ack}")
    else:
        notices.queue_acknowledgement(session, app, ticket, item, message)
    notices.queue_dispatcher_notice(session, app, ticket, item, message, linked, why_linked, notice_to)
    number = linked.number if linked else None
    return IngestResult(Outcome.NEW_TICKET, ticket.number, mail.message_id, item.trace, linked_ticket=number)
