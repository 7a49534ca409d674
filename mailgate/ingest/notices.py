"""The mail a new ticket causes: the requester's acknowledgement and the dispatcher's notice."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from mailgate.app import App
from mailgate.ingest.incoming import Incoming
from mailgate.models import Message, Person, Ticket
from mailgate.outgoing.compose import local_time
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail, acks_recently, queue
from mailgate.people import person_for


def excerpt(text: str, *, lines: int, chars: int) -> str:
    """The start of a text for a notification, marked when cut."""
    kept = [line.rstrip() for line in text.strip().splitlines()[:lines]]
    short = "\n".join(kept)[:chars].rstrip()
    return short + (" […]" if short != text.strip() else "")


def why_no_acknowledgement(session: Session, app: App, item: Incoming) -> str | None:
    """The reason not to acknowledge this new ticket, or None to acknowledge it."""
    sender, limits = item.sender, app.settings.limits
    if sender.undeliverable_since is not None:
        return f"{sender.address} is undeliverable ({sender.undeliverable_reason})"
    if not sender.address.isascii():
        return f"{sender.address} needs SMTPUTF8, which outgoing mail does not use"
    if acks_recently(session, sender.address, item.now, limits.ack_window_minutes) >= limits.acks_per_sender:
        return f"rate limit reached ({limits.acks_per_sender} in {limits.ack_window_minutes} minutes)"
    return None


def queue_acknowledgement(session: Session, app: App, ticket: Ticket, item: Incoming, message: Message) -> None:
    context = {
        "due": local_time(app.settings, ticket.first_response_due),
        "over_limit": [a for a in message.attachments if not a.stored],
        "summary": excerpt(item.mail.text, lines=6, chars=500),
    }
    outgoing = OutgoingMail(
        "ack",
        f"ack:{ticket.number}",
        ticket,
        item.sender,
        "ack",
        context,
        auto_submitted=AutoSubmitted.REPLIED,
        in_reply_to=item.mail.message_id,
    )
    queue(session, app.settings, app.templates, app.secret, outgoing, item.now, ticket_is_new=True)


def dispatcher(session: Session, app: App, now: datetime) -> Person:
    return person_for(session, app.settings, app.settings.addresses.dispatcher, "Dispatcher", now)


def queue_dispatcher_notice(
    session: Session,
    app: App,
    ticket: Ticket,
    item: Incoming,
    message: Message,
    linked: Ticket | None,
    why: str,
    to: Person,
) -> None:
    """The dispatcher's copy of a new ticket, to `to` (see dispatcher())."""
    settings = app.settings
    sender = item.sender
    context = {
        "requester_line": ", ".join(
            p for p in (sender.name or sender.address, sender.department, sender.location) if p
        ),
        "requester_address": sender.address if sender.name else "",
        "received": local_time(settings, item.arrived),
        "channel": item.source,
        "due": local_time(settings, ticket.first_response_due),
        "excerpt": excerpt(message.text_new, lines=40, chars=3000) or "(no text)",
        "attachments": message.attachments,
        "linked": linked,
        "link_reason": why,
        "automatic": item.reasons,
    }
    outgoing = OutgoingMail(
        "dispatcher_new",
        f"dispatcher_new:{ticket.number}",
        ticket,
        to,
        "dispatcher_new",
        context,
        # A notification, not a reply: RFC 3834 keeps auto-replied for answers to one mail.
        auto_submitted=AutoSubmitted.GENERATED,
    )
    queue(session, settings, app.templates, app.secret, outgoing, item.now, ticket_is_new=True)
