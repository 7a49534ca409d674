"""Step rate: the requester answers the auto-close mail's "how did we do?" (templates/sla_closed)
with "#rate 5", "4" or "good" on the first lines (sla/rating.py). The rating is stored on the
ticket with an event naming what proved the requester wrote it: only a proven reply rates (a
token issued to them, a trusted pass), since anyone can write "1" under a requester's From.

A reply of the rating alone asks for nothing more: apply does not reopen the ticket (nor open a
follow-up past the reopen window), relay does not pass it on (item.rating_only). A reply that
says more than the rating is a normal reply, and the rating is stored too. A rating alone is
thanked for (templates/rating_thanks), at most limits.acks_per_sender such mails a mailbox in
limits.ack_window_minutes.
"""

from __future__ import annotations

from mailgate import tickets
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.quotes import extract_reply
from mailgate.languages import language_of
from mailgate.models import Status, Ticket
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail
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
    if item.rating_only:  # a reply with more to say is answered by the desk, not by a thank-you
        _thank(item, ticket, rating)
    return None


def _thank(item: Incoming, ticket: Ticket, rating: int) -> None:
    app, sender = item.app, item.sender
    limits = app.settings.limits
    if item.answers_exhausted("rating_thanks", sender.address):
        item.note(
            "rate",
            f"no thank-you: rate limit reached ({limits.acks_per_sender} in {limits.ack_window_minutes} minutes)",
        )
        return
    outgoing = OutgoingMail(
        "rating_thanks",
        # The same mail again (same content) is thanked for once.
        f"rating_thanks:{ticket.number}:{item.content_sha256[:16]}",
        ticket,
        sender,
        "rating_thanks",
        {"rating": rating},
        auto_submitted=AutoSubmitted.REPLIED,
        in_reply_to=item.mail.message_id,
        rcpt_proven=True,
        language=language_of(app.settings, sender.address),
    )
    item.send("rate", outgoing, what="thank-you")
