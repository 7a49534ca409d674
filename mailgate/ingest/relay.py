"""Step relay: the conversation between the requester's side and the desk travels by mail.

- the person the ticket was just assigned to (item.assigned) gets the thread so far;
- a proven staff member's answer goes to the requester and the Cc, as the desk's answer in
  their name; the first one is the first response, and the ticket waits for the requester
  (pending). An internal note (#note) goes nowhere. An answer nobody proved is kept, not sent,
  and its staff member is told why;
- a requester's or Cc's reply goes to the assignee, or the dispatcher while nobody is assigned;
- a ticket someone else resolved or closed: the requester is told.
Each relayed mail is threaded for its recipient (relay/threading.py) and carries the files of
what it relays (relay/files.py). Nothing is relayed for imported history (end_imported ended
those), duplicates or held mail (ended before apply), or automatic mail.
"""

from __future__ import annotations

from sqlalchemy import select

from mailgate import permissions
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.models import MessageKind, Participant, Status, Ticket
from mailgate.relay.answer import relay_answer, tell_kept
from mailgate.relay.assignment import tell_assignee
from mailgate.relay.closed import tell_closed
from mailgate.relay.mail import who
from mailgate.relay.reply import relay_reply


def relay(item: Incoming) -> Outcome | None:
    message, ticket, sender = item.message, item.ticket, item.sender
    if item.history is not None or message is None or ticket is None:
        return None
    proven = item.proof is not None and item.proof.person_id == sender.id
    if item.assigned is not None and item.assigned.id != sender.id:
        # Assigned by this mail: by its proven staff sender (#assign), else by the routing rules.
        actor = who(sender) if proven and sender.is_staff else "the desk's routing rules"
        if tell_assignee(
            item.session,
            item.app,
            ticket,
            item.assigned,
            actor,
            item.now,
            cause=message,
            cause_text=item.text_after_commands,
            cause_internal=item.internal,
        ):
            item.queued += 1
            item.note("relay", f"assignment notice to {item.assigned.address}")
    if item.reasons or message.kind != MessageKind.REPLY:
        # Automatic mail is relayed to nobody (apply ended a robot's mail on a ticket already;
        # this holds for any a later step lets through); a new ticket has the dispatcher's notice.
        return None
    text = item.text_after_commands if item.text_after_commands is not None else message.text_new
    answered_requester = False
    if item.rating_only:
        item.note("relay", "a rating and nothing more: not relayed")
    elif sender.id == ticket.requester_id or not sender.is_staff:
        relay_reply(item, ticket, message, text)
    elif proven and not item.internal and _watches(item, ticket) and not _works_on(item, ticket):
        # A staff member on the ticket's Cc (the one who forwarded it, a manager) who does not
        # work on it writes as a Cc does: to the assignee, not for the desk to the requester.
        relay_reply(item, ticket, message, text)
    elif not proven:
        item.note("relay", f"staff mail of {sender.address} kept, not relayed: not proven to come from them")
        if item.text_after_commands is None and text.strip():  # command mail gets the commands' reply
            tell_kept(item, ticket, message, "not_proven")
    elif not permissions.may_work_on(item.app.settings, sender, ticket):
        item.note("relay", f"staff mail of {sender.address} kept, not relayed: they do not work on this ticket")
        if text.strip() and not item.internal:
            tell_kept(item, ticket, message, "not_allowed")
    elif item.internal:
        item.note("relay", "internal note: not relayed")
    elif not text.strip():
        item.note("relay", "no text besides the commands: nothing to relay")
    else:
        sent = relay_answer(item, ticket, message, text)
        answered_requester = any(p.id == ticket.requester_id for p in sent)
    if item.status_set and ticket.status in (Status.RESOLVED, Status.CLOSED) and sender.id != ticket.requester_id:
        if answered_requester:
            item.note("relay", "the answer tells the requester the ticket is done")
        else:
            tell_closed(item, ticket, message)
    return None


def _works_on(item: Incoming, ticket: Ticket) -> bool:
    return permissions.may_work_on(item.app.settings, item.sender, ticket)


def _watches(item: Incoming, ticket: Ticket) -> bool:
    query = select(Participant.id).where(
        Participant.ticket_id == ticket.id,
        Participant.person_id == item.sender.id,
        Participant.role.in_(("cc", "watcher")),
    )
    return item.session.scalar(query.limit(1)) is not None
