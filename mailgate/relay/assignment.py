"""The assignment notice: the person a ticket was just given to gets the thread so far (each
message's new text in order, internal notes marked), its files, the due dates, and how to answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from mailgate.app import App
from mailgate.ingest.notify import excerpt
from mailgate.languages import language_of
from mailgate.models import Message, MessageKind, Person, Ticket
from mailgate.outgoing.compose import local_time
from mailgate.outgoing.outbox import AutoSubmitted
from mailgate.relay.files import bounded
from mailgate.relay.mail import queue_relayed, who

# Messages shown: the request and the newest after it. Each is cut like the dispatcher's
# notice, so a ticket of a thousand mails still makes a notice one can read (and a bounded one).
THREAD_MESSAGES = 20
_LINES, _CHARS = 40, 3000
# What a person wrote, and what robots sent on the ticket; bounces and held mail are not the thread.
_THREAD_KINDS = (MessageKind.NEW_TICKET, MessageKind.REPLY, MessageKind.AUTO)


@dataclass(frozen=True)
class Entry:
    """One message of the thread as the notice shows it."""

    number: int  # its place in the whole thread, from 1
    author: str
    when: str
    text: str
    internal: bool
    automatic: bool


def is_internal(message: Message) -> bool:
    """An internal note (#note): for staff only. The column comes with the commands."""
    return bool(getattr(message, "internal", False))


def tell_assignee(
    session: Session,
    app: App,
    ticket: Ticket,
    assignee: Person,
    actor: str,
    now: datetime,
    *,
    cause: Message | None = None,
    cause_text: str | None = None,
    cause_internal: bool = False,
) -> bool:
    """Queue the assignment notice to `assignee`, assigned by `actor` (who, in words). `cause`:
    the mail that assigned it, shown with `cause_text` (its text without command lines) when
    given; it is left out of the thread when that is empty. True if a mail was queued."""
    settings = app.settings
    language = language_of(settings, assignee.address)
    if cause is not None:
        session.flush()  # the occasion names the message by its id
    shown, total = _messages(session, ticket)
    entries = []
    for number, message in shown:
        text = message.text_new
        internal = is_internal(message)
        if cause is not None and message.id == cause.id:
            text = cause_text if cause_text is not None else text
            internal = internal or cause_internal
            if not text.strip():
                continue  # the command mail that assigned it says nothing else
        entries.append(
            Entry(
                number=number,
                author=f"{message.from_name} <{message.from_addr}>" if message.from_name else message.from_addr,
                when=local_time(settings, message.received_at, language),
                text=excerpt(text, lines=_LINES, chars=_CHARS) or "(no text)",
                internal=internal,
                automatic=message.kind == MessageKind.AUTO,
            )
        )
    files = bounded(
        (a for _, m in shown for a in m.attachments),
        settings.relay.max_attachment_bytes,
    )
    context = {
        "actor": actor,
        "requester": who(ticket.requester),
        "due": local_time(settings, ticket.first_response_due, language),
        "answered": local_time(settings, ticket.first_response_at, language),
        "resolution_due": local_time(settings, ticket.resolution_due, language),
        "entries": entries,
        "hidden": total - len(shown),
    }
    when = f"{cause.id}" if cause is not None else now.strftime("%Y%m%dT%H%M%S%f")
    row = queue_relayed(
        session,
        app,
        kind="assigned",
        occasion=f"assigned:{ticket.number}:{when}:{assignee.id}",
        ticket=ticket,
        to=assignee,
        context=context,
        now=now,
        relayed=cause or (shown[-1][1] if shown else None),  # threads after the newest message
        files=files,
        auto_submitted=AutoSubmitted.GENERATED,
        language=language,
    )
    return row is not None


def _messages(session: Session, ticket: Ticket) -> tuple[list[tuple[int, Message]], int]:
    """The request and the newest messages after it, numbered by their place in the thread,
    and how many the thread holds."""
    base = select(Message).where(Message.ticket_id == ticket.id, Message.kind.in_(_THREAD_KINDS))
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    load = selectinload(Message.attachments)
    first = session.scalars(base.options(load).order_by(Message.id).limit(1)).all()
    newest = session.scalars(base.options(load).order_by(Message.id.desc()).limit(THREAD_MESSAGES - 1)).all()
    shown = [(1, m) for m in first]
    shown += [(total - n, m) for n, m in enumerate(newest) if not first or m.id != first[0].id][::-1]
    return shown, total
