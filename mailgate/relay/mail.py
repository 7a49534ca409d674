"""Queue one relayed mail: the outbox row with the thread headers, files and language of its
recipient. Every mail of the relay goes through here, and through outbox.queue from here."""

from __future__ import annotations

from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgate.app import App
from mailgate.languages import language_of
from mailgate.models import Message, Outbox, Person, Ticket
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail, queue
from mailgate.relay.files import Files
from mailgate.relay.threading import thread_ids


def who(person: Person) -> str:
    """'Dana Smith <dana@example.com>', or the address alone when we know no name."""
    return f"{person.name} <{person.address}>" if person.name else person.address


# The head of the request that is read for the language it asked for: its header fields.
_REQUEST_HEAD = 64 * 1024


def language_for(session: Session, app: App, ticket: Ticket, person: Person) -> str:
    """The language to write to `person` in: staff and the directory by their entry, the
    requester also by what their request asked for (Content-Language …), as the acknowledgement."""
    request = None
    if person.id == ticket.requester_id:
        head = session.scalar(
            select(func.substr(Message.raw, 1, _REQUEST_HEAD))
            .where(Message.ticket_id == ticket.id, Message.sender_id == person.id)
            .order_by(Message.id)
            .limit(1)
        )
        if head:
            request = BytesHeaderParser(policy=compat32).parsebytes(bytes(head))
    return language_of(app.settings, person.address, request)


def queue_relayed(
    session: Session,
    app: App,
    *,
    kind: str,
    occasion: str,
    ticket: Ticket,
    to: Person,
    context: dict[str, Any],
    now: datetime,
    relayed: Message | None = None,
    files: Files | None = None,
    from_name: str = "",
    auto_submitted: AutoSubmitted = AutoSubmitted.NO,
    language: str | None = None,
) -> Outbox | None:
    """The mail of template `kind` to `to`, threaded after `relayed` and our earlier mail to
    them; None when it was queued before (a retry) or `to` cannot be mailed."""
    files = files or Files()
    language = language or language_for(session, app, ticket, to)
    in_reply_to, references = thread_ids(session, ticket, to, relayed)
    outgoing = OutgoingMail(
        kind,
        occasion,
        ticket,
        to,
        kind,
        {**files.context(), **context},
        auto_submitted=auto_submitted,
        in_reply_to=in_reply_to,
        references=references,
        language=language,
        from_name=from_name,
        attachments=tuple(files.attached),
    )
    return queue(session, app.settings, app.templates, app.secret, outgoing, now)
