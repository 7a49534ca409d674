"""A staff member's answer, passed on to the requester and the people on Cc as the desk's
public answer, in the staff member's name. Only a proven staff member's: an answer whose From
nobody proved is kept on the ticket, not sent, and its staff member is told how to send one."""

from __future__ import annotations

from sqlalchemy import select

from mailgate import tickets
from mailgate.addresses import fold_address
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.notify import excerpt
from mailgate.models import Message, Participant, Person, Status, Ticket
from mailgate.outgoing.outbox import AutoSubmitted
from mailgate.people import robots
from mailgate.relay.files import bounded
from mailgate.relay.mail import queue_relayed

# People an answer goes to: the requester and the Cc (a ticket's first mail names at most
# limits.max_participants_per_mail, #cc add more); bounded so one answer's cost is too.
MAX_RECIPIENTS = 100


def recipients(item: Incoming, ticket: Ticket) -> list[Person]:
    """The requester, then the people on the ticket, each once, never the sender."""
    people = [ticket.requester]
    people += item.session.scalars(
        select(Person)
        .join(Participant, Participant.person_id == Person.id)
        .where(Participant.ticket_id == ticket.id)
        .order_by(Participant.id)
        .limit(MAX_RECIPIENTS)
    )
    sender = fold_address(item.sender.address)
    unique = {p.id: p for p in people if p.id != item.sender.id and fold_address(p.address) != sender}
    automatic = robots(item.session, ticket, list(unique.values()))
    if automatic:
        item.note("relay", f"not to {len(automatic)} robot(s) whose every mail on the ticket was automatic")
    return [p for p in unique.values() if p.id not in automatic][:MAX_RECIPIENTS]


def relay_answer(item: Incoming, ticket: Ticket, message: Message, text: str) -> list[Person]:
    """Send proven staff member `item.sender`'s `text` to the requester's side; whom it went to."""
    app, sender, session = item.app, item.sender, item.session
    assert item.proof is not None
    files = bounded(message.attachments, app.settings.relay.max_attachment_bytes)
    context = {
        "text": text,
        "agent": sender.name or sender.address,
        # A #close in the same mail: the answer says so, instead of a second mail.
        "closed": ticket.status if item.status_set and ticket.status in (Status.RESOLVED, Status.CLOSED) else "",
        "reopen_days": app.settings.tickets.reopen_window_days,
    }
    name = f"{sender.name or sender.address.partition('@')[0]} via {app.settings.addresses.display_name}"
    sent = []
    for person in recipients(item, ticket):
        row = queue_relayed(
            session,
            app,
            kind="answer",
            occasion=f"answer:{message.id}:{person.id}",
            ticket=ticket,
            to=person,
            context={**context, "to_requester": person.id == ticket.requester_id},
            now=item.now,
            relayed=message,
            files=files,
            from_name=name,
        )
        if row is not None:
            sent.append(person)
    if not sent:
        item.note("relay", "answer not relayed: nobody on the requester's side can be mailed")
        return sent
    item.queued += len(sent)
    item.note("relay", f"answer of {sender.address} relayed to {', '.join(p.address for p in sent)}")
    evidence = item.proof.evidence
    tickets.record(
        session,
        ticket,
        actor=sender.address,
        action="relayed",
        field="answer",
        new=", ".join(p.address for p in sent),
        channel=item.source,
        at=item.now,
        message_id=message.id,
        evidence=evidence,
    )
    if any(p.id == ticket.requester_id for p in sent):
        tickets.answered(
            session, ticket, sender, channel=item.source, now=item.now, message_id=message.id, evidence=evidence
        )
    if not item.status_set and ticket.status in (Status.NEW, Status.OPEN):
        # Answered: the desk waits for the requester now. After a resolution a remark leaves it so.
        tickets.set_status(
            session, ticket, Status.PENDING, actor=sender.address, channel=item.source, now=item.now, evidence=evidence
        )
    return sent


def tell_kept(item: Incoming, ticket: Ticket, message: Message, reason: str) -> None:
    """Tell staff member `item.sender`, at their own address, that their answer was kept on the
    ticket and not sent: `reason` is "not_proven" or "not_allowed". Limited like
    acknowledgements: a forger mailing in their name a thousand times makes a few of these."""
    app, sender = item.app, item.sender
    if item.answers_exhausted("answer_kept", sender.address):
        item.note("relay", f"no answer_kept notice to {sender.address}: rate limit reached")
        return
    row = queue_relayed(
        item.session,
        app,
        kind="answer_kept",
        occasion=f"answer_kept:{message.id}:{sender.id}",
        ticket=ticket,
        to=sender,
        context={
            "reason": reason,
            "excerpt": excerpt(message.text_new, lines=6, chars=500),
            "replaced": item.token_replaced,
        },
        now=item.now,
        relayed=message,
        auto_submitted=AutoSubmitted.REPLIED,
    )
    if row is not None:
        item.queued += 1
        item.note("relay", f"answer_kept notice to {sender.address}")
