"""Step rate: the requester answers the auto-close mail's "how did we do?" (templates/sla_closed)
with "#rate 5", "4" or "good" on the first lines (sla/rating.py). The rating is stored on the
ticket with an event naming what proved the requester wrote it: only a proven reply rates (a
token issued to them, a trusted pass), since anyone can write "1" under a requester's From.

A reply of the rating alone asks for nothing more: apply does not reopen the ticket (nor open a
follow-up past the reopen window), relay does not pass it on (item.rating_only). A reply that
says more than the rating is a normal reply, and the rating is stored too.
"""

from __future__ import annotations

from mailgate import tickets
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.quotes import extract_reply
from mailgate.models import Status
from mailgate.sla.rating import split_rating

_RATED = (Status.RESOLVED, Status.CLOSED)


def rate(item: Incoming) -> Outcome | None:
    ticket, sender = item.thread.ticket, item.sender
    if item.history is not None or item.reasons or item.reaction or item.commands is not None:
        return None
    if ticket is None or ticket.status not in _RATED or sender.id != ticket.requester_id:
        return None
    rating, rest = split_rating(extract_reply(item.mail.text))
    if rating is None:
        return None
    # A rating alone, nothing attached: the requester asks for nothing more.
    item.rating_only = rest == "" and not item.mail.attachments
    proof = item.proof
    if proof is None or proof.person_id != sender.id:
        item.note("rate", f"rating {rating} not stored: not proven to come from the requester")
        return None
    old = ticket.rating
    ticket.rating, ticket.rated_at = rating, item.now
    tickets.record(
        item.session,
        ticket,
        actor=sender.address,
        action="rated",
        channel=item.source,
        at=item.now,
        field="rating",
        old=str(old) if old is not None else None,
        new=str(rating),
        evidence=proof.evidence,
    )
    item.note("rate", f"rated {rating} by the requester" + ("" if item.rating_only else ", with more to say"))
    return None
