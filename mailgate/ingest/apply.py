"""Step apply: the mail changes the desk. Automatic mail is stored (on its ticket when it
threads) and changes nothing; a reply is added to its ticket; anything else opens a ticket.

Every change to a ticket goes through tickets.py, every change to a person through people.py.
No one becomes a participant by mailing in: the people a new ticket's first mail names in To
and Cc are on it from the start (the requester chose them, and they may answer), at most
limits.max_participants_per_mail of them; a reply adds no one.
"""

from __future__ import annotations

from mailgate import people, tickets
from mailgate import subject as subjects
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.store import store_message
from mailgate.models import MessageKind, Person, Ticket
from mailgate.reasons import Reason
from mailgate.sla import policy as sla

_STATUS_COMMANDS = ("status", "pending", "close", "reopen", "merge", "undo")


def apply(item: Incoming) -> Outcome | None:
    """Automatic mail ends the pipeline here (never answered); a reply or a new ticket goes on."""
    # Automatic mail never changes a ticket; a reaction (auto-reply, bounce) never opens one.
    ticket = item.thread.ticket
    if item.reaction or (item.reasons and ticket is not None):
        return _automatic(item, ticket)
    window = item.app.settings.tickets.reopen_window_days
    # A rating alone (see rate) is no follow-up, however long the ticket has been closed.
    if ticket is not None and not item.rating_only and tickets.is_past_reopen_window(ticket, item.now, window):
        item.note("apply", f"ticket {ticket.number} closed beyond the reopen window: follow-up")
        _new_ticket(item, ticket, "follow-up", Reason("follow_up", "follow-up of a closed ticket"))
    elif ticket is None:
        decision = item.thread
        _new_ticket(item, decision.linked, decision.link_kind, decision.link_reason)
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
    session.flush()  # the event names the message by its id
    tickets.record(
        session, ticket, actor=sender.address, action="message", channel=item.source, at=item.now, message_id=message.id
    )
    # A note or a mail of commands only answers nobody; commands that set the status set it.
    commands = item.commands
    was = ticket.status
    tickets.message_added(
        session,
        ticket,
        sender,
        channel=item.source,
        now=item.now,
        answer=not item.internal and item.text_after_commands != "",
        moves_status=not item.rating_only
        and (commands is None or not any(line.command.name in _STATUS_COMMANDS for line in commands.lines)),
    )
    if was != ticket.status:  # the requester's reply ends a pause, and the deadlines move by it
        sla.recompute(item.app.settings, ticket, item.now)


def _new_ticket(item: Incoming, linked: Ticket | None, link_kind: str, link_reason: str) -> None:
    session, settings, mail = item.session, item.app.settings, item.mail
    priority = settings.tickets.default_priority
    # A proven staff member's forward (see forwarded) is the original sender's ticket, with the
    # original's subject and the people it was to; the forwarder watches it.
    on_behalf = item.on_behalf
    sender = item.requester
    # People first, the ticket number last (see identify): those copied, and the dispatcher the
    # new ticket is reported to.
    copied = on_behalf.participants if on_behalf is not None else _copied_people(item)
    item.dispatcher = people.dispatcher(session, settings, item.now)
    title = (on_behalf.subject if on_behalf is not None else "") or mail.subject
    ticket = tickets.create_ticket(
        session,
        subject=subjects.clean_subject(settings.tickets.tag_prefix, title),
        requester=sender,
        priority=priority,
        channel=item.source,
        # A mail that waited in the spool: the ticket exists since the mail arrived.
        now=item.arrived,
        first_response_due=None,
    )
    sla.set_deadlines(settings, ticket)
    for person in {p.id: p for p in copied if p.id != sender.id}.values():  # each once, in order
        tickets.add_participant(session, ticket, person, "cc", new_ticket=True)
    if on_behalf is not None:
        tickets.opened_on_behalf(
            session,
            ticket,
            sender,
            on_behalf.forwarder,
            evidence=on_behalf.evidence,
            channel=item.source,
            now=item.now,
        )
    if linked is not None:
        tickets.link(session, ticket, linked, link_kind, channel=item.source, now=item.now)
        item.linked, item.link_reason = linked, link_reason
    item.ticket, item.ticket_number = ticket, ticket.number
    item.note("apply", f"new ticket {ticket.number}")
    # An attached original is the first message: its headers, text and files (forwards.py).
    content = on_behalf.forward.content if on_behalf is not None else None
    item.message = store_message(item, ticket, MessageKind.NEW_TICKET, content)


def _copied_people(item: Incoming) -> list[Person]:
    """The people the first mail copies (To and Cc, not us, not the sender), each once and at
    most limits.max_participants_per_mail: a mail naming 60,000 addresses costs 60,000 people
    otherwise. The rest stay in the stored mail; the trace says how many were left out."""
    settings, sender = item.app.settings, item.sender
    named: dict[str, str] = {}
    for name, address in item.mail.to + item.mail.cc:
        if address != sender.address and address not in named and not people.is_own_address(settings, address):
            named[address] = name
    limit = settings.limits.max_participants_per_mail
    if len(named) > limit:
        item.note(
            "apply",
            f"{len(named)} people in To/Cc: the first {limit} made participants, {len(named) - limit} left out "
            f"(kept in the stored mail; limits.max_participants_per_mail)",
        )
    chosen = list(named.items())[:limit]
    return [people.person_for(item.session, settings, address, name, item.now) for address, name in chosen]
