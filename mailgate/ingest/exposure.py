"""Step exposure: a staff member's reply token that the mail showed to others is replaced.

A staff member who answers the desk's mail from her client and puts the requester (or anyone
outside the desk) on To/Cc shows them her reply address, and the mail she answered quotes her
token in its Message-ID. Whoever got that copy could write her From to it and be taken for her
(ingest/authenticate.py). So when a mail carries a staff member's token (where thread finds
tokens, or quoted in its text, as a forward does) and its To/Cc names an
address that is neither hers nor one of the desk's own, her token for that ticket is replaced:
the desk's mail to her carries the next generation from now on, and the old one threads but
proves nothing. The mail itself was written before the exposure and is handled as usual (its
proof was taken already); she is told, once per replacement and rate-limited like the other
explanations.

A requester's token is never replaced: a requester who copies a colleague shows only what lets
one write into their own ticket and #close/#reopen it, and replacing it would break every reply
they send later to the desk's earlier mail.
"""

from __future__ import annotations

from sqlalchemy import select

from mailgate import reply_tokens, tokens
from mailgate import subject as subjects
from mailgate.addresses import fold_address
from mailgate.config import Settings
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.languages import language_of
from mailgate.models import Person, Ticket
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail
from mailgate.tokens import ReplyToken

# How many addresses the notice names: a mail may have thousands on its Cc.
_NAMED = 10
# How many token-shaped strings of the body are checked: a forward quotes a few.
_QUOTED = 50


def exposure(item: Incoming) -> Outcome | None:
    if item.history is not None:  # imported history changes nothing
        return None
    settings = item.app.settings
    own = {fold_address(a) for a in settings.addresses.all_own()}  # as people.is_own_address, once
    shown = [a for _, a in item.mail.to + item.mail.cc if fold_address(a) not in own]
    if not shown:
        return None
    for token, ticket in item.thread.held + _quoted(item):
        person = item.session.get(Person, token.person_id)
        if person is None or not person.is_staff:
            continue  # a requester's token is never replaced (see above)
        others = _others(settings, person, shown)
        if others:
            _replace(item, token, ticket, person, others)
    return None


def _quoted(item: Incoming) -> list[tuple[ReplyToken, Ticket]]:
    """Our signed tokens the mail shows elsewhere than where thread looked: a forwarded notice
    quotes its Reply-To in the body, or carries its whole header as a message/rfc822 part
    (never base64, RFC 2046 5.2.1, so the raw mail has it). Each once, the first _QUOTED."""
    held = {token for token, _ in item.thread.held}
    text = "\n".join((item.mail.subject, item.mail.text, item.mail.raw.decode("latin-1")))
    found: list[tuple[ReplyToken, Ticket]] = []
    for candidate in list(dict.fromkeys(tokens.find_tokens(text)))[:_QUOTED]:
        token = tokens.verify(item.app.secret, candidate)
        if token is None or token in held:
            continue
        held.add(token)
        ticket = item.session.scalar(select(Ticket).where(Ticket.number == token.ticket_number))
        if ticket is not None:
            found.append((token, ticket))
    return found


def _others(settings: Settings, person: Person, shown: list[str]) -> list[str]:
    """The addresses in `shown` that are not `person`'s (their directory address or an alias)."""
    member = settings.staff_member(person.address)
    theirs = {fold_address(a) for a in (member.addresses if member is not None else [person.address])}
    return list(dict.fromkeys(a for a in shown if fold_address(a) not in theirs))


def _replace(item: Incoming, token: ReplyToken, ticket: Ticket, person: Person, others: list[str]) -> None:
    tag = subjects.format_tag(item.app.settings.tickets.tag_prefix, ticket.number)
    if not reply_tokens.is_current(item.session, token):
        item.note("exposure", f"replaced reply token of {person.address} ({tag}) shown to others again")
        return
    generation = reply_tokens.replace(item.session, ticket.id, person.id, item.now)
    item.note("exposure", f"reply token of {person.address} ({tag}) shown to {len(others)} other(s): replaced")
    _tell(item, ticket, person, others, generation)


def _tell(item: Incoming, ticket: Ticket, person: Person, others: list[str], generation: int) -> None:
    """The notice to the staff member, with her new token (queue issues the current one)."""
    app = item.app
    if item.answers_exhausted("token_exposed", person.address):
        item.note("exposure", f"no notice to {person.address}: rate limit reached")
        return
    named = others[:_NAMED] + ([f"{len(others) - _NAMED} more"] if len(others) > _NAMED else [])
    outgoing = OutgoingMail(
        "token_exposed",
        f"token_exposed:{ticket.number}:{person.id}:{generation}",
        ticket,
        person,
        "token_exposed",
        {"shown_to": named},
        auto_submitted=AutoSubmitted.REPLIED,
        in_reply_to=item.mail.message_id,
        language=language_of(app.settings, person.address),
    )
    item.send("exposure", outgoing, what="token_exposed notice")
