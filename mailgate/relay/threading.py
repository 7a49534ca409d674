"""The thread headers of a relayed mail, per recipient: In-Reply-To the relayed message, and
References the request and our earlier mail on the ticket to that recipient, so their client
(which holds those) files it into the conversation they already see."""

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
    # The request itself: the requester sent it and the people on its Cc received it, so their
    # clients thread by it even where no mail of ours reached them yet.
    request = session.scalar(
        select(Message.message_id).where(Message.ticket_id == ticket.id).order_by(Message.id).limit(1)
    )
    if _usable(request) and request not in ids:
        ids.insert(0, request)
    own = relayed.message_id if relayed is not None else None
    if _usable(own):
        return own, tuple(i for i in ids if i != own)
    if ids:
        return ids[-1], tuple(ids[:-1])
    return None, ()


def _usable(message_id: str | None) -> bool:
    return bool(message_id) and len(message_id) <= _MAX_ID and not any(c in message_id for c in "<> \t\r\n")
