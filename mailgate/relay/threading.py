"""The thread headers of a relayed mail, per recipient: In-Reply-To the relayed message and
References our earlier mail on the ticket to that recipient, so their client (which holds
those) files it into the conversation they already see."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.addresses import fold_address
from mailgate.models import Message, Outbox, Person, Ticket

# Earlier mails named in References: the newest few thread as well as all of them, and a ticket
# with a year of mail must not make a header of kilobytes.
EARLIER = 5
# A Message-ID longer than this (a hostile mail's) is left out rather than carried on.
_MAX_ID = 250


def thread_ids(
    session: Session, ticket: Ticket, recipient: Person, relayed: Message | None
) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To and the References before it (bare ids, without <>) for a mail to `recipient`."""
    earlier = list(
        session.scalars(
            select(Outbox.message_id)
            .where(Outbox.ticket_id == ticket.id, Outbox.rcpt_key == fold_address(recipient.address))
            .order_by(Outbox.id.desc())
            .limit(EARLIER)
        )
    )
    ids = [i.strip("<>") for i in reversed(earlier)]
    own = relayed.message_id if relayed is not None else None
    if own and len(own) <= _MAX_ID and "<" not in own and ">" not in own:
        return own, tuple(ids)
    if ids:
        return ids[-1], tuple(ids[:-1])
    return None, ()
