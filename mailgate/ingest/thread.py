"""Step thread: which ticket does a mail belong to? Strongest evidence first, and each is traced.

1. a signed reply token: in a plus address, or inside one of our Message-IDs quoted back in
   In-Reply-To/References (survives Exchange stripping plus addresses);
2. In-Reply-To/References matching a Message-ID we stored or sent;
3. the subject tag [PREFIX #N], but only for someone already on that ticket: a stranger quoting a
   tag gets a new ticket linked to the tagged one, so no one can write into another's ticket.
Subject text alone never threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate import subject as subjects
from mailgate import tokens
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.parse import ParsedMail
from mailgate.models import Message, Outbox, Participant, Person, Ticket


@dataclass
class ThreadDecision:
    ticket: Ticket | None = None
    token: tokens.ReplyToken | None = None
    # A ticket the new one should link to (stranger quoting its tag).
    linked: Ticket | None = None
    trace: list[dict[str, str]] = field(default_factory=list)

    def note(self, step: str, decision: str) -> None:
        self.trace.append({"step": step, "decision": decision})


def _plus_tokens(addresses: Iterable[str]) -> list[tuple[str, str]]:
    found = []
    for address in addresses:
        local = address.partition("@")[0]
        if "+" in local:
            found.extend((address, t) for t in tokens.find_tokens(local.partition("+")[2]))
    return found


def _ticket(session: Session, number: int) -> Ticket | None:
    return session.scalar(select(Ticket).where(Ticket.number == number))


def _by_token(session: Session, secret: bytes, candidates: list[tuple[str, str]], decision: ThreadDecision) -> bool:
    for where, token in candidates:
        verified = tokens.verify(secret, token)
        if verified is None:
            decision.note("token", f"token in {where} has no valid signature: ignored")
            continue
        ticket = _ticket(session, verified.ticket_number)
        if ticket is None:
            decision.note("token", f"valid token in {where} names unknown ticket {verified.ticket_number}")
            continue
        decision.ticket, decision.token = ticket, verified
        decision.note("token", f"signed token in {where} -> ticket {ticket.number}")
        return True
    return False


def _by_message_ids(session: Session, ids: Sequence[str], decision: ThreadDecision) -> bool:
    if not ids:
        return False
    stored = dict(
        session.execute(
            select(Message.message_id, Message.ticket_id).where(
                Message.message_id.in_(ids), Message.ticket_id.is_not(None)
            )
        ).all()
    )
    sent = dict(
        session.execute(
            select(Outbox.message_id, Outbox.ticket_id).where(
                Outbox.message_id.in_([f"<{i}>" for i in ids]), Outbox.ticket_id.is_not(None)
            )
        ).all()
    )
    for mid in ids:  # newest reference first
        ticket_id = stored.get(mid) or sent.get(f"<{mid}>")
        if ticket_id is not None:
            ticket = session.get(Ticket, ticket_id)
            assert ticket is not None
            decision.ticket = ticket
            decision.note("references", f"<{mid}> is a stored message of ticket {ticket.number}")
            return True
    decision.note("references", f"none of {len(ids)} referenced Message-IDs is known")
    return False


def _is_on_ticket(session: Session, ticket: Ticket, person: Person) -> bool:
    if person.is_staff or ticket.requester_id == person.id:
        return True
    return (
        session.scalar(
            select(Participant.id).where(Participant.ticket_id == ticket.id, Participant.person_id == person.id)
        )
        is not None
    )


def _by_tag(session: Session, prefix: str, mail: ParsedMail, sender: Person, decision: ThreadDecision) -> bool:
    number = subjects.find_tag(prefix, mail.subject)
    if number is None:
        decision.note("tag", "no subject tag")
        return False
    ticket = _ticket(session, number)
    if ticket is None:
        decision.note("tag", f"tag #{number} names no ticket: ignored")
        return False
    if not _is_on_ticket(session, ticket, sender):
        decision.linked = ticket
        decision.note("tag", f"tag #{number}, but {sender.address} is not on that ticket: new ticket, linked")
        return False
    decision.ticket = ticket
    decision.note("tag", f"tag #{number} from {sender.address}, who is on the ticket")
    return True


def decide(
    session: Session,
    *,
    mail: ParsedMail,
    sender: Person,
    secret: bytes,
    tag_prefix: str,
    envelope_recipients: Sequence[str] = (),
    extra_ids: Sequence[str] = (),
) -> ThreadDecision:
    """Find the ticket `mail` belongs to. `extra_ids`: Message-IDs quoted inside a bounce."""
    decision = ThreadDecision()
    recipients = [*envelope_recipients, *(a for _, a in mail.to + mail.cc)]
    for name in ("Delivered-To", "X-Original-To"):
        recipients.extend(v.strip().strip("<>").lower() for v in mail.headers(name))
    candidates = _plus_tokens(recipients)
    ids = [*mail.thread_ids, *extra_ids]
    candidates += [(f"<{mid}>", t) for mid in ids for t in tokens.find_tokens(mid)]
    if _by_token(session, secret, candidates, decision):
        return decision
    if _by_message_ids(session, ids, decision):
        return decision
    _by_tag(session, tag_prefix, mail, sender, decision)
    return decision


def thread(item: Incoming) -> Outcome | None:
    """Step thread: the decision, with its evidence on the trace. A bounce is also matched by
    the Message-IDs of our mail that it quotes."""
    item.thread = decide(
        item.session,
        mail=item.mail,
        sender=item.sender,
        secret=item.app.secret,
        tag_prefix=item.app.settings.tickets.tag_prefix,
        envelope_recipients=item.envelope_recipients,
        extra_ids=item.bounce.original_ids if item.bounce else (),
    )
    item.trace += item.thread.trace
    return None
