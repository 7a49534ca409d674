"""A requester's (or a Cc's) reply, passed on to whoever works on the ticket: the assignee, or
the dispatcher while nobody is assigned. Only the new text travels (the quote below it is the
conversation they have), with the reply's files."""

from __future__ import annotations

from mailgate import people, tickets
from mailgate.ingest.incoming import Incoming
from mailgate.models import Message, Status, Ticket
from mailgate.relay.files import bounded
from mailgate.relay.mail import queue_relayed, who


def relay_reply(item: Incoming, ticket: Ticket, message: Message, text: str) -> None:
    app, sender, session = item.app, item.sender, item.session
    to = ticket.assignee or people.dispatcher(session, app.settings, item.now)
    if to.id == sender.id:
        item.note("relay", f"reply not relayed: {to.address} wrote it")
        return
    files = bounded(message.attachments, app.settings.relay.max_attachment_bytes)
    if not text.strip() and not files.attached and not files.left_out:
        item.note("relay", "reply not relayed: no text and no files")
        return
    context = {
        "text": text,
        "sender": who(sender),
        "role": "requester" if sender.id == ticket.requester_id else "cc",
        "requester": who(ticket.requester),
        "assigned": ticket.assignee is not None,
    }
    row = queue_relayed(
        session,
        app,
        kind="requester_reply",
        occasion=f"requester_reply:{message.id}:{to.id}",
        ticket=ticket,
        to=to,
        context=context,
        now=item.now,
        relayed=message,
        files=files,
        from_name=f"{sender.name or sender.address} via {app.settings.addresses.display_name}",
    )
    if row is None:
        item.note("relay", f"reply not relayed: {to.address} cannot be mailed")
        return
    item.queued += 1
    item.note("relay", f"reply of {sender.address} relayed to {to.address}")
    tickets.record(
        session,
        ticket,
        actor=sender.address,
        action="relayed",
        field="reply",
        new=to.address,
        channel=item.source,
        at=item.now,
        message_id=message.id,
    )
    if not item.status_set and ticket.status == Status.PENDING:
        # The desk waited for their side (tickets.message_added reopens for the requester; a
        # Cc answering a question counts as much).
        tickets.set_status(session, ticket, Status.OPEN, actor=sender.address, channel=item.source, now=item.now)
