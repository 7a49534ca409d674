"""The SLA clock stands still while a ticket waits on its requester (pending), in business time:
a weekend pending counts nothing twice; a change of priority moves the promise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from mailgate import tickets
from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Status, Ticket
from mailgate.sla import policy
from tests.mails import mail
from tests.test_sla_deadlines import BERLIN, FRIDAY_1630, desk, local


def _change(app: App, number: int, change) -> Ticket:
    """What a desk command does: change the ticket, then recompute, in one transaction."""
    now = app.clock.now()
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        change(s, t, now)
        policy.recompute(app.settings, t, now)
        s.commit()
        s.refresh(t)
        return t


def _pend(s, t, now, until=None) -> None:
    tickets.set_pending(s, t, until, actor="alice@example.com", channel="test", now=now)


def test_pending_over_a_weekend_counts_only_its_business_time(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, FRIDAY_1630)
    number = ingest(app, mail(), "smtp").ticket_number
    # Friday 16:45 the agent asks the requester something; they answer Monday 10:00.
    app.clock.set(datetime(2026, 11, 27, 16, 45, tzinfo=BERLIN).astimezone(UTC))
    t = _change(app, number, _pend)
    assert t.status == Status.PENDING and t.pending_since is not None
    app.clock.set(datetime(2026, 11, 30, 10, 0, tzinfo=BERLIN).astimezone(UTC))
    ingest(app, mail(subject=f"Re: [HD #{number}] Printer", body="Here is the serial number.\n"), "smtp")
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == number))
    assert t.status == Status.OPEN and t.pending_since is None
    # Paused 15 minutes on Friday and the first hour on Monday, not the weekend: Monday 12:30
    # plus 1 h 15 m; the resolution deadline (Wednesday 16:30) moves to Thursday 09:45.
    assert local(t.first_response_due) == datetime(2026, 11, 30, 13, 45, tzinfo=BERLIN)
    assert local(t.resolution_due) == datetime(2026, 12, 3, 9, 45, tzinfo=BERLIN)
    assert len(t.pauses) == 1
    app.close()


def test_a_priority_change_recomputes_the_deadlines_and_the_warning(tmp_path, db_url) -> None:
    app = desk(
        tmp_path,
        db_url,
        FRIDAY_1630,
        targets={"normal": {"first_response": "4h"}, "urgent": {"first_response": "1h"}},
    )
    number = ingest(app, mail(), "smtp").ticket_number
    before = _change(app, number, lambda s, t, now: None)
    assert local(before.first_response_due) == datetime(2026, 11, 30, 12, 30, tzinfo=BERLIN)

    def urgent(s, t, now) -> None:
        t.priority = "urgent"

    t = _change(app, number, urgent)
    # Half an hour on Friday, half an hour on Monday; warned at 75 %: 45 minutes in.
    assert local(t.first_response_due) == datetime(2026, 11, 30, 9, 30, tzinfo=BERLIN)
    assert local(t.first_response_warn_at) == datetime(2026, 11, 30, 9, 15, tzinfo=BERLIN)
    app.close()


def test_while_pending_the_deadline_moves_with_the_clock(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, FRIDAY_1630)
    number = ingest(app, mail(), "smtp").ticket_number
    t = _change(app, number, _pend)
    app.clock.advance(timedelta(days=3))  # Monday 16:30: 8 business hours pending
    t = _change(app, number, lambda s, t, now: None)
    assert local(t.first_response_due) == datetime(2026, 12, 1, 12, 30, tzinfo=BERLIN)
    app.close()
