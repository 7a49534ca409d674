"""Step apply: the mail changes the desk. Automatic mail is stored (on its ticket when it
threads) and changes nothing; a reply is added to its ticket; anything else opens a ticket.

Every change to a ticket goes through tickets.py, every change to a person through people.py.
"""

from __future__ import annotations

from datetime import timedelta

from mailgate import people, tickets
from mailgate import subject as subjects
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.store import store_message
from mailgate.models import MessageKind, Ticket


def apply(item: Incoming) -> Outcome | None:
    """Automatic mail ends the pipeline here (never answered); a reply or a new ticket goes on."""
    # Automatic mail never changes a ticket; a reaction (auto-reply, bounce) never opens one.
    ticket = item.thread.ticket
    if item.reaction or (item.reasons and ticket is not None):
        return _automatic(item, ticket)
    window = item.app.settings.tickets.reopen_window_days
    if ticket is not None and tickets.is_past_reopen_window(ticket, item.now, window):
        item.note("apply", f"ticket {ticket.number} closed beyond the reopen window: follow-up")
        _new_ticket(item, linked=ticket)
    elif ticket is None:
        _new_ticket(item, linked=item.thread.linked)
    else:
        _reply(item, ticket)
    return None


def _automatic(item: Incoming, ticket: Ticket | None) -> Outcome:
    kind, outcome = (MessageKind.BOUNCE, Outcome.BOUNCE) if item.bounce else (MessageKind.AUTO, Outcome.AUTO)
    if ticket is None:
        item.note("apply", "automatic mail on no ticket: stored only")
        item.message = store_message(item, None, kind)
        return outcome
    item.ticket, item.ticket_number = ticket, ticket.number
    item.note("apply", f"automatic mail on ticket {ticket.number}: stored, no status changed")
    item.message = message = store_message(item, ticket, kind)
    item.session.flush()  # the event names the message by its id
    tickets.record(
        item.session,
        ticket,
        actor=item.sender.address,
        action=kind,
        channel=item.source,
        at=item.now,
        message_id=message.id,
        new="; ".join(item.reasons),
    )
    token = item.thread.token
    if item.bounce and token is not None:
        # Only a bounce quoting our signed token, and only for the person that mail went to:
        # anyone can forge a DSN naming any address, but not our signature.
        failed: dict[str, str] = {}
        for failure in item.bounce.failures:
            if failure.permanent:
                failed.setdefault(failure.address, f"{failure.status} {failure.diagnostic}".strip())
        people.mark_undeliverable(
            item.session, token.person_id, failed, ticket=ticket, channel=item.source, now=item.now
        )
    return outcome


def _reply(item: Incoming, ticket: Ticket) -> None:
    session, sender = item.session, item.sender
    item.ticket, item.ticket_number = ticket, ticket.number
    item.note("apply", f"reply on ticket {ticket.number}")
    item.message = message = store_message(item, ticket, MessageKind.REPLY)
    tickets.add_participant(session, ticket, sender, "staff" if sender.is_staff else "cc")
    session.flush()  # the event names the message by its id
    tickets.record(
        session, ticket, actor=sender.address, action="message", channel=item.source, at=item.now, message_id=message.id
    )
    tickets.message_added(session, ticket, sender, channel=item.source, now=item.now)


def _new_ticket(item: Incoming, linked: Ticket | None) -> None:
    session, settings, mail, sender = item.session, item.app.settings, item.mail, item.sender
    priority = settings.tickets.default_priority
    # People first, the ticket number last (see identify): those copied, and the dispatcher the
    # new ticket is reported to.
    copied = [
        people.person_for(session, settings, address, name, item.now)
        for name, address in mail.to + mail.cc
        if address != sender.address and not people.is_own_address(settings, address)
    ]
    item.dispatcher = people.dispatcher(session, settings, item.now)
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
    if linked is not None:
        follow_up = linked.requester_id == sender.id
        tickets.link(
            session, ticket, linked, "follow-up" if follow_up else "quoted-tag", channel=item.source, now=item.now
        )
        item.linked = linked
        item.link_reason = "follow-up of a closed ticket" if follow_up else "the sender quoted its tag but is not on it"
    item.ticket, item.ticket_number = ticket, ticket.number
    item.note("apply", f"new ticket {ticket.number}")
    item.message = store_message(item, ticket, MessageKind.NEW_TICKET)
