"""The close notice: the requester hears that someone else resolved or closed their ticket,
what was done, and that a reply within the reopen window opens it again."""

from __future__ import annotations

from mailgate.ingest.incoming import Incoming
from mailgate.ingest.notify import excerpt
from mailgate.models import Message, Ticket
from mailgate.outgoing.outbox import AutoSubmitted
from mailgate.people import robots
from mailgate.relay.mail import queue_relayed


def tell_closed(item: Incoming, ticket: Ticket, message: Message) -> None:
    app, sender = item.app, item.sender
    if robots(item.session, ticket, [ticket.requester]):
        item.note("relay", f"no close notice: every mail of {ticket.requester.address} on the ticket was automatic")
        return
    context = {
        "status": ticket.status,
        "by": sender.name or sender.address,
        "done": excerpt(item.close_text, lines=20, chars=2000) if item.close_text.strip() else "",
        "reopen_days": app.settings.tickets.reopen_window_days,
    }
    row = queue_relayed(
        item.session,
        app,
        kind="closed",
        occasion=f"closed:{message.id}:{ticket.requester_id}",
        ticket=ticket,
        to=ticket.requester,
        context=context,
        now=item.now,
        relayed=message,
        auto_submitted=AutoSubmitted.GENERATED,  # the desk's notice, not a person's words
    )
    if row is not None:
        item.queued += 1
        item.note("relay", f"close notice to {ticket.requester.address}")
