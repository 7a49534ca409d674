"""ingest(): raw mail in, ticket state out, in one transaction. Every transport calls only this.

The steps, in order: parse (or quarantine) -> dedupe -> classify -> identify the sender ->
thread -> store message and attachments -> create/append/reopen -> queue outgoing mail.
Anything failing after parsing rolls the whole transaction back and is reported as temporary,
so the transport keeps the mail and retries: a mail is never lost.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgate import subject as subjects
from mailgate import tickets
from mailgate.app import App
from mailgate.ingest import classify, thread
from mailgate.ingest.parse import ParsedMail, Unparseable, parse
from mailgate.ingest.text import extract_reply
from mailgate.models import Attachment, Message, MessageKind, Person, Quarantine, Ticket
from mailgate.notify import Outgoing, acks_recently, local_time, queue

log = logging.getLogger("mailgate.ingest")


class TemporaryFailure(Exception):
    """Nothing was stored; the mail must be offered again later (SMTP 451, IMAP: leave it)."""


@dataclass
class IngestResult:
    outcome: str  # new_ticket | reply | duplicate | auto | bounce | quarantined
    ticket_number: int | None = None
    message_id: str | None = None
    trace: list[dict[str, str]] = field(default_factory=list)
    quarantine_id: int | None = None
    linked_ticket: int | None = None


# Headers added in transit: two copies of one mail differ only in these.
_TRACE_HEADER = re.compile(
    rb"^(received|x-received|return-path|delivered-to|x-original-to|envelope-to|x-envelope-to|"
    rb"authentication-results|arc-[a-z-]+|x-spam-[a-z-]+|x-virus-[a-z-]+|x-ms-exchange-organization-[a-z-]+)"
    rb"\s*:",
    re.I,
)


def dedupe_key(mail: ParsedMail) -> str:
    """The normalised Message-ID, else a hash of the mail without its trace headers."""
    if mail.message_id:
        return f"mid:{mail.message_id}"[:1000]
    raw = mail.raw.replace(b"\r\n", b"\n")
    head, _, body = raw.partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = bool(_TRACE_HEADER.match(line)) or line.startswith(b"From ")
        if not skipping:
            kept.append(line)
    return "sha256:" + hashlib.sha256(b"\n".join(kept) + b"\n\n" + body).hexdigest()


def ingest(
    app: App,
    raw: bytes,
    source: str,
    envelope_recipients: Sequence[str] = (),
    envelope_sender: str | None = None,
) -> IngestResult:
    """Store `raw` (from `source`, e.g. "smtp", "imap:support", "pipe") and act on it.

    `envelope_sender` is the SMTP MAIL FROM when the transport knows it ("" for the null sender
    of bounces and auto-replies).
    """
    now = app.clock.now()
    try:
        mail = parse(raw, app.settings.limits.max_message_bytes)
    except Unparseable as exc:
        return _quarantine(app, raw, source, str(exc), now)
    mail.envelope_sender = envelope_sender
    rcpts = [r.lower() for r in envelope_recipients]
    try:
        result = _apply_with_retry(app, mail, source, rcpts, now)
    except TemporaryFailure:
        raise
    except Exception as exc:
        # One line for the operator (database down, disk full …); the traceback only with -v.
        log.error(
            "ingest failed, rolled back, mail left with the sender: source=%s msgid=<%s>: %s: %s",
            source,
            mail.message_id,
            type(exc).__name__,
            exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from exc
    log.info(
        "ingest source=%s msgid=<%s> outcome=%s ticket=%s evidence=%s",
        source,
        mail.message_id,
        result.outcome,
        result.ticket_number,
        "; ".join(t["decision"] for t in result.trace if t["step"] in ("token", "references", "tag", "classify"))
        or "-",
    )
    return result


def _quarantine(app: App, raw: bytes, source: str, reason: str, now: datetime) -> IngestResult:
    try:
        with app.sessions() as session, session.begin():
            row = Quarantine(raw=raw, reason=reason, source=source, received_at=now)
            session.add(row)
            session.flush()
            row_id = row.id
    except Exception as exc:
        log.error("could not write quarantine: %s: %s", type(exc).__name__, exc)
        raise TemporaryFailure(f"could not quarantine: {exc}") from exc
    log.warning("quarantined source=%s id=%s reason=%s", source, row_id, reason)
    return IngestResult("quarantined", trace=[{"step": "parse", "decision": reason}], quarantine_id=row_id)


def _apply_with_retry(app: App, mail: ParsedMail, source: str, rcpts: list[str], now: datetime) -> IngestResult:
    """Run the transaction; a unique-key race with a concurrent ingest is settled by re-running.

    Two daemons may store the same mail (-> duplicate) or create the same new person at once
    (-> the second run finds the person): neither is an error the sender should see.
    """
    for attempt in range(3):
        try:
            with app.sessions() as session, session.begin():
                return _apply(session, app, mail, source, rcpts, now)
        except IntegrityError as exc:
            log.info("ingest msgid=<%s>: concurrent insert (%s), attempt %d", mail.message_id, exc.orig, attempt + 1)
            last = exc
    raise TemporaryFailure(f"database integrity error: {last.orig}") from last


def _known(session: Session, key: str) -> IngestResult | None:
    row = session.execute(
        select(Message.id, Ticket.number)
        .outerjoin(Ticket, Ticket.id == Message.ticket_id)
        .where(Message.dedupe_key == key)
    ).first()
    if row is None:
        return None
    return IngestResult(
        "duplicate",
        ticket_number=row.number,
        trace=[{"step": "dedupe", "decision": f"already stored as {key}"}],
    )


def _person(session: Session, app: App, address: str, name: str, now: datetime) -> Person:
    """The person behind `address`, with role and team from the staff list in the config."""
    person = tickets.find_or_create_person(session, address, name, now)
    settings = app.settings
    for member in settings.staff:
        if member.address == person.address:
            person.role, person.team = member.role, member.team
            person.name = member.name or person.name
    if person.address == settings.addresses.dispatcher:
        person.role = "dispatcher"
    return person


def _is_own(app: App, address: str) -> bool:
    local, _, domain = address.partition("@")
    return f"{local.partition('+')[0]}@{domain}" in app.settings.addresses.all_own()


def _apply(session: Session, app: App, mail: ParsedMail, source: str, rcpts: list[str], now: datetime) -> IngestResult:
    settings = app.settings
    key = dedupe_key(mail)
    known = _known(session, key)
    if known is not None:
        return known
    trace = [{"step": "dedupe", "decision": key}]

    reasons = classify.auto_reasons(mail, settings.addresses.all_own(), settings.outgoing.loop_id)
    trace += [{"step": "classify", "decision": r} for r in reasons]
    bounce = classify.read_bounce(mail) if reasons else None

    sender = _person(session, app, mail.from_addr, mail.from_name, now)
    decision = thread.decide(
        session,
        mail=mail,
        sender=sender,
        secret=app.secret,
        tag_prefix=settings.tickets.tag_prefix,
        envelope_recipients=rcpts,
        extra_ids=bounce.original_ids if bounce else (),
    )
    trace += decision.trace
    ticket = decision.ticket

    if reasons:
        kind = MessageKind.BOUNCE if bounce else MessageKind.AUTO
        message = _store(session, app, mail, source, now, ticket, kind, sender, trace, reasons)
        if ticket is not None:
            tickets.record(
                session,
                ticket,
                actor=sender.address,
                action=kind,
                channel=source,
                at=now,
                message_id=message.id,
                new="; ".join(reasons),
            )
        if bounce and ticket is not None:
            _mark_undeliverable(session, ticket, bounce, source, now)
        return IngestResult(kind.value, ticket.number if ticket else None, mail.message_id, trace)

    if ticket is not None and tickets.is_past_reopen_window(ticket, now, settings.tickets.reopen_window_days):
        trace.append(
            {
                "step": "apply",
                "decision": f"ticket {ticket.number} closed beyond the reopen window: follow-up",
            }
        )
        decision.linked, ticket = ticket, None

    if ticket is None:
        return _new_ticket(session, app, mail, source, now, sender, decision.linked, trace)

    message = _store(session, app, mail, source, now, ticket, MessageKind.REPLY, sender, trace, [])
    tickets.add_participant(session, ticket, sender, "staff" if sender.is_staff else "cc")
    tickets.record(
        session,
        ticket,
        actor=sender.address,
        action="message",
        channel=source,
        at=now,
        message_id=message.id,
    )
    if sender.is_staff:
        ticket.last_activity_at = now
        if ticket.first_response_at is None and sender.id != ticket.requester_id:
            ticket.first_response_at = now
    else:
        tickets.requester_replied(session, ticket, actor=sender.address, channel=source, now=now)
    return IngestResult("reply", ticket.number, mail.message_id, trace)


def _new_ticket(
    session: Session,
    app: App,
    mail: ParsedMail,
    source: str,
    now: datetime,
    sender: Person,
    linked: Ticket | None,
    trace: list[dict[str, str]],
) -> IngestResult:
    settings = app.settings
    priority = settings.tickets.default_priority
    due = now + timedelta(hours=settings.tickets.first_response_hours[priority])
    title = subjects.clean_subject(settings.tickets.tag_prefix, mail.subject)
    ticket = tickets.create_ticket(
        session,
        subject=title,
        requester=sender,
        priority=priority,
        channel=source,
        now=now,
        first_response_due=due,
    )
    for _, address in mail.to + mail.cc:
        if address != sender.address and not _is_own(app, address):
            tickets.add_participant(session, ticket, _person(session, app, address, "", now), "cc")
    link_reason = ""
    if linked is not None:
        follow_up = linked.requester_id == sender.id
        link_reason = "follow-up of a closed ticket" if follow_up else "the sender quoted its tag but is not on it"
        tickets.link(
            session,
            ticket,
            linked,
            "follow-up" if follow_up else "quoted-tag",
            channel=source,
            now=now,
        )
    trace.append({"step": "apply", "decision": f"new ticket {ticket.number}"})
    message = _store(session, app, mail, source, now, ticket, MessageKind.NEW_TICKET, sender, trace, [])

    over_limit = [a for a in message.attachments if not a.stored]
    if sender.undeliverable_since is not None:
        trace.append({"step": "notify", "decision": f"no acknowledgement: {sender.address} is undeliverable"})
    elif (
        acks_recently(session, sender.address, now, settings.limits.ack_window_minutes)
        >= settings.limits.acks_per_sender
    ):
        trace.append({"step": "notify", "decision": "no acknowledgement: rate limit for this sender reached"})
    else:
        queue_acknowledgement(session, app, ticket, sender, mail, now, over_limit)
    queue_dispatcher_notice(session, app, ticket, sender, message, source, now, linked, link_reason)
    return IngestResult(
        "new_ticket",
        ticket.number,
        mail.message_id,
        trace,
        linked_ticket=linked.number if linked else None,
    )


def queue_acknowledgement(
    session: Session,
    app: App,
    ticket: Ticket,
    sender: Person,
    mail: ParsedMail,
    now: datetime,
    over_limit: list[Attachment],
) -> None:
    context = {
        "due": local_time(app.settings, ticket.first_response_due),
        "over_limit": over_limit,
        "summary": excerpt(mail.text, lines=6, chars=500),
    }
    outgoing = Outgoing("ack", f"ack:{ticket.number}", ticket, sender, "ack", context, in_reply_to=mail.message_id)
    queue(session, app.settings, app.templates, app.secret, outgoing, now)


def queue_dispatcher_notice(
    session: Session,
    app: App,
    ticket: Ticket,
    sender: Person,
    message: Message,
    source: str,
    now: datetime,
    linked: Ticket | None,
    link_reason: str,
) -> None:
    settings = app.settings
    dispatcher = _person(session, app, settings.addresses.dispatcher, "Dispatcher", now)
    requester_line = ", ".join(p for p in (sender.name or sender.address, sender.department, sender.location) if p)
    context = {
        "requester_line": requester_line,
        "requester_address": sender.address if sender.name else "",
        "received": local_time(settings, now),
        "channel": source,
        "due": local_time(settings, ticket.first_response_due),
        "excerpt": excerpt(message.text_new, lines=40, chars=3000) or "(no text)",
        "attachments": message.attachments,
        "linked": linked,
        "link_reason": link_reason,
    }
    outgoing = Outgoing(
        "dispatcher_new",
        f"dispatcher_new:{ticket.number}",
        ticket,
        dispatcher,
        "dispatcher_new",
        context,
        automatic=True,
    )
    queue(session, settings, app.templates, app.secret, outgoing, now)


def excerpt(text: str, *, lines: int, chars: int) -> str:
    """The start of a text for a notification, marked when cut."""
    kept = [line.rstrip() for line in text.strip().splitlines()[:lines]]
    short = "\n".join(kept)[:chars].rstrip()
    return short + (" […]" if short != text.strip() else "")


def _store(
    session: Session,
    app: App,
    mail: ParsedMail,
    source: str,
    now: datetime,
    ticket: Ticket | None,
    kind: str,
    sender: Person,
    trace: list[dict[str, str]],
    reasons: list[str],
) -> Message:
    new_text = extract_reply(mail.text) if kind == MessageKind.REPLY else mail.text
    message = Message(
        ticket_id=ticket.id if ticket else None,
        direction="in",
        kind=kind,
        dedupe_key=dedupe_key(mail),
        message_id=mail.message_id,
        in_reply_to=" ".join(f"<{i}>" for i in mail.in_reply_to) or None,
        refs=mail.references,
        from_addr=mail.from_addr,
        from_name=mail.from_name,
        to_addrs=[a for _, a in mail.to],
        cc_addrs=[a for _, a in mail.cc],
        subject=mail.subject,
        date=mail.date,
        received_at=now,
        source=source,
        sender_id=sender.id,
        text_new=new_text,
        text_full=mail.text,
        auto_reasons=reasons,
        trace=trace,
        raw=mail.raw,
    )
    session.add(message)
    limit = app.settings.limits.max_attachment_bytes
    for item in mail.attachments:
        size = len(item.data)
        if size > limit:
            note = f"{size} bytes, over the limit of {limit} (limits.max_attachment_bytes): not kept"
            digest = hashlib.sha256(item.data).hexdigest()
            row = Attachment(
                sha256=digest,
                size=size,
                content_type=item.content_type,
                filename=item.filename,
                stored=False,
                note=note,
            )
        else:
            row = Attachment(
                sha256=app.store.put(item.data),
                size=size,
                content_type=item.content_type,
                filename=item.filename,
                stored=True,
            )
        message.attachments.append(row)
    session.flush()
    return message


def _mark_undeliverable(session: Session, ticket: Ticket, bounce: classify.Bounce, source: str, now: datetime) -> None:
    """A permanent failure of our own mail (tied to a ticket): stop mailing that address."""
    for failure in bounce.failures:
        if not failure.permanent:
            continue
        person = session.scalar(select(Person).where(Person.address == failure.address))
        if person is None or person.undeliverable_since is not None:
            continue
        person.undeliverable_since = now
        person.undeliverable_reason = f"{failure.status} {failure.diagnostic}".strip()[:2000]
        tickets.record(
            session,
            ticket,
            actor="mailgate",
            action="undeliverable",
            channel=source,
            at=now,
            field="address",
            new=f"{failure.address}: {person.undeliverable_reason}",
        )
