"""Which generation of a person's reply token for a ticket is current (tokens.py signs the
generation into the token; models.ReplyTokenGeneration stores it once it is not 0).

Only the current generation proves its person (ingest/authenticate.py); an older one still
threads, since threading is not proof, and the listener accepts it as a recipient.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.models import ReplyTokenGeneration, Ticket
from mailgate.tokens import ReplyToken


def current(session: Session, ticket_id: int | None, person_id: int) -> int:
    """The generation of the token the desk now issues to `person_id` for ticket `ticket_id`."""
    if ticket_id is None:  # a ticket not flushed yet: nothing can have been replaced on it
        return 0
    found = session.scalar(
        select(ReplyTokenGeneration.generation).where(
            ReplyTokenGeneration.ticket_id == ticket_id, ReplyTokenGeneration.person_id == person_id
        )
    )
    return found or 0


def is_current(session: Session, token: ReplyToken) -> bool:
    """Whether `token` (a verified one) is the generation the desk issues now."""
    ticket_id = session.scalar(select(Ticket.id).where(Ticket.number == token.ticket_number))
    return token.generation == current(session, ticket_id, token.person_id)


def replace(session: Session, ticket_id: int, person_id: int, now: datetime) -> int:
    """Make the next generation current for `person_id` on the ticket; returns it. Every token
    issued to them for it so far stops proving them."""
    row = session.scalar(
        select(ReplyTokenGeneration).where(
            ReplyTokenGeneration.ticket_id == ticket_id, ReplyTokenGeneration.person_id == person_id
        )
    )
    if row is None:
        row = ReplyTokenGeneration(ticket_id=ticket_id, person_id=person_id, generation=0)
        session.add(row)
    row.generation += 1
    row.replaced_at = now
    session.flush()  # the mail this transaction queues to them carries the new generation
    return row.generation
