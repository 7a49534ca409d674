"""Step thread: which ticket does a mail belong to? The evidence names a ticket; the sender decides
whether the mail may go on it. Each is traced.

The evidence, strongest first:
1. a signed reply token: in a plus address, or inside one of our Message-IDs quoted back in
   In-Reply-To/References (survives Exchange stripping plus addresses);
2. In-Reply-To/References matching a Message-ID we stored or sent;
3. the subject tag [PREFIX #N].
Subject text alone never threads.

Whatever the evidence, it is only a claim about where the mail belongs: Message-IDs are visible
to everyone who got the first mail, reply addresses get forwarded, tags are typed, and From
proves nothing. So one rule decides: the mail goes on the ticket when its sender is on that
ticket (see `on_ticket`) or the mail carries a token we issued to the sender for it. Anyone else
gets a new ticket linked to the one the evidence names. A reaction (an auto-reply or a bounce)
never opens a ticket: it goes on the ticket only with our token (it then reports on our mail),
else on none.
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
from mailgate.reasons import Reason

# What a new ticket's link says about the evidence its sender had no right to: by the step that
# found it (tickets.link kind).
LINK_KINDS = {"token": "quoted-token", "references": "quoted-reference", "tag": "quoted-tag"}
_WHY_LINKED = {
    "token": Reason("linked_token", "the sender used a reply address or Message-ID issued to someone else"),
    "references": Reason("linked_references", "the sender replied to a message of it but is not on it"),
    "tag": Reason("linked_tag", "the sender quoted its tag but is not on it"),
}


@dataclass
class ThreadDecision:
    # The ticket the mail goes on: named by the evidence, and the sender may write on it.
    ticket: Ticket | None = None
    # Our signed token for `ticket` that the mail carried, if any (a bounce names the person our
    # mail went to by it).
    token: tokens.ReplyToken | None = None
    # A ticket the evidence named but the sender may not write on: a new ticket links to it.
    linked: Ticket | None = None
    link_kind: str = ""
    link_reason: str = ""
    # Every signed token of ours the mail carried that names a ticket, whoever's: a staff
    # member's among them may have been shown to the mail's other recipients (ingest/exposure.py).
    held: list[tuple[tokens.ReplyToken, Ticket]] = field(default_factory=list)
    trace: list[dict[str, str]] = field(default_factory=list)

    def note(self, step: str, decision: str) -> None:
        self.trace.append({"step": step, "decision": decision})


@dataclass(frozen=True)
class _Named:
    """A ticket the evidence points at, and which step found it."""

    ticket: Ticket
    step: str


def _plus_tokens(addresses: Iterable[str]) -> list[tuple[str, str]]:
    found = []
    for address in addresses:
        local = address.partition("@")[0]
        if "+" in local:
            found.extend((address, t) for t in tokens.find_tokens(local.partition("+")[2]))
    return found


def _ticket(session: Session, number: int) -> Ticket | None:
    return session.scalar(select(Ticket).where(Ticket.number == number))


def _verified_tokens(
    session: Session, secret: bytes, candidates: list[tuple[str, str]], decision: ThreadDecision
) -> list[tuple[tokens.ReplyToken, Ticket]]:
    """Every token of ours among `candidates` that names an existing ticket, each once, in their
    order. Forged ones are counted in one note: a mail may carry thousands."""
    found: list[tuple[tokens.ReplyToken, Ticket]] = []
    forged: list[str] = []
    first_seen: dict[str, str] = {}
    for where, token in candidates:
        first_seen.setdefault(token, where)
    for token, where in first_seen.items():
        verified = tokens.verify(secret, token)
        if verified is None:
            forged.append(where)
            continue
        ticket = _ticket(session, verified.ticket_number)
        if ticket is None:
            decision.note("token", f"valid token in {where} names unknown ticket {verified.ticket_number}")
            continue
        decision.note("token", f"signed token in {where} -> ticket {ticket.number}")
        found.append((verified, ticket))
    if forged:
        more = f" (and {len(forged) - 1} more)" if len(forged) > 1 else ""
        decision.note("token", f"token in {forged[0]}{more} has no valid signature: ignored")
    return found


def _by_message_ids(session: Session, ids: Sequence[str], decision: ThreadDecision) -> Ticket | None:
    if not ids:
        return None
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
            decision.note("references", f"<{mid}> is a stored message of ticket {ticket.number}")
            return ticket
    decision.note("references", f"none of {len(ids)} referenced Message-IDs is known")
    return None


def _by_tag(session: Session, prefix: str, mail: ParsedMail, decision: ThreadDecision) -> Ticket | None:
    number = subjects.find_tag(prefix, mail.subject)
    if number is None:
        decision.note("tag", "no subject tag")
        return None
    ticket = _ticket(session, number)
    if ticket is None:
        decision.note("tag", f"tag #{number} names no ticket: ignored")
    return ticket


def on_ticket(session: Session, ticket: Ticket, person: Person) -> str | None:
    """How `person` is on `ticket` by their address alone ('requester', 'assignee', 'cc'), or None.

    Staff get nothing from a From header: until staff mail is authenticated, a staff member is
    on a ticket only as its assignee (or by a token issued to them, see decide), never as a
    participant someone else's mail named.
    """
    if ticket.requester_id == person.id:
        return "requester"
    if ticket.assignee_id == person.id:
        return "assignee"
    if person.is_staff:
        return None
    participant = session.scalar(
        select(Participant.role).where(Participant.ticket_id == ticket.id, Participant.person_id == person.id)
    )
    return "cc" if participant is not None else None


def decide(
    session: Session,
    *,
    mail: ParsedMail,
    sender: Person,
    secret: bytes,
    tag_prefix: str,
    envelope_recipients: Sequence[str] = (),
    extra_ids: Sequence[str] = (),
    reaction: bool = False,
) -> ThreadDecision:
    """Find the ticket `mail` belongs to. `extra_ids`: Message-IDs quoted inside a bounce.
    `reaction`: the mail answers earlier mail (auto-reply, bounce) and never opens a ticket."""
    decision = ThreadDecision()
    recipients = [*envelope_recipients, *(a for _, a in mail.to + mail.cc)]
    for name in ("Delivered-To", "X-Original-To"):
        recipients.extend(v.strip().strip("<>").lower() for v in mail.headers(name))
    candidates = _plus_tokens(recipients)
    ids = [*mail.thread_ids, *extra_ids]
    candidates += [(f"<{mid}>", t) for mid in ids for t in tokens.find_tokens(mid)]
    held = decision.held = _verified_tokens(session, secret, candidates, decision)
    # A token issued to the sender is their evidence, before tokens of other people's mail.
    held.sort(key=lambda found: found[0].person_id != sender.id)
    named = None
    if held:
        named = _Named(held[0][1], "token")
    elif (ticket := _by_message_ids(session, ids, decision)) is not None:
        named = _Named(ticket, "references")
    elif (ticket := _by_tag(session, tag_prefix, mail, decision)) is not None:
        named = _Named(ticket, "tag")
    if named is not None:
        ticket_tokens = [token for token, t in held if t.id == named.ticket.id]
        named = _follow_merges(session, named, decision)
        _admit(session, decision, named, sender, ticket_tokens, reaction)
    return decision


# A chain of merges this long is followed (a merge names a ticket not merged itself, so one
# step is the rule; the bound keeps a loop from costing anything).
_MERGE_HOPS = 5


def _follow_merges(session: Session, named: _Named, decision: ThreadDecision) -> _Named:
    """Mail to a merged ticket goes on the ticket it was merged into (#merge): its people were
    made people of that one, and a token of the merged ticket admits as before."""
    ticket = named.ticket
    for _ in range(_MERGE_HOPS):
        if ticket.merged_into_id is None:
            break
        into = session.get(Ticket, ticket.merged_into_id)
        if into is None:
            break
        decision.note(named.step, f"ticket {ticket.number} was merged into ticket {into.number}: mail goes there")
        ticket = into
    return _Named(ticket, named.step)


def _admit(
    session: Session,
    decision: ThreadDecision,
    named: _Named,
    sender: Person,
    ticket_tokens: list[tokens.ReplyToken],
    reaction: bool,
) -> None:
    """The one rule: may this sender write on the ticket the evidence named?"""
    ticket, number, who = named.ticket, named.ticket.number, sender.address
    own_token = next((t for t in ticket_tokens if t.person_id == sender.id), None)
    how = "holds a token issued to them" if own_token else on_ticket(session, ticket, sender)
    if how is not None:
        decision.ticket = ticket
        decision.token = own_token or next(iter(ticket_tokens), None)
        decision.note(named.step, f"ticket {number}: {who} is on it ({how})")
    elif reaction and ticket_tokens:
        decision.ticket, decision.token = ticket, ticket_tokens[0]
        decision.note(named.step, f"ticket {number}: an automatic reaction to our mail there (signed token)")
    elif reaction:
        decision.note(named.step, f"ticket {number}: {who} is not on it and has no token of it: on no ticket")
    else:
        decision.linked = ticket
        decision.link_kind, decision.link_reason = LINK_KINDS[named.step], _WHY_LINKED[named.step]
        why = "is not on it and holds no token issued to them for it"
        if sender.is_staff:
            why = "is staff, on a ticket only as its assignee or by a token issued to them"
        decision.note(named.step, f"ticket {number}: {who} {why}: new ticket, linked")


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
        reaction=item.reaction,
    )
    item.trace += item.thread.trace
    return None
