"""`#pending until <date>`: when the day comes, the ticket is open again and needs the desk.

A scheduler job, a plain function (session, settings, now) -> count, tested with a fixed now.
A ticket answered or closed in the meantime is left alone: only tickets still pending wake.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate import tickets
from mailgate.config import Settings
from mailgate.models import Status, Ticket

BATCH = 500  # tickets woken per run: the next run takes the rest


def wake_pending(session: Session, settings: Settings, now: datetime) -> int:
    """Open the pending tickets whose `pending_until` has come; how many. Commits."""
    due = list(
        session.scalars(
            select(Ticket)
            .where(Ticket.status == Status.PENDING, Ticket.pending_until.is_not(None), Ticket.pending_until <= now)
            .order_by(Ticket.pending_until)
            .limit(BATCH)
        )
    )
    for ticket in due:
        tickets.set_status(session, ticket, Status.OPEN, actor="mailgate", channel="scheduler", now=now)
        tickets.set_pending_until(session, ticket, None, actor="mailgate", channel="scheduler", now=now)
    session.commit()
    return len(due)
