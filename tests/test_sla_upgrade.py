"""Tickets opened before the desk had SLA targets (an older release, or [sla] without targets)
have no deadlines. The next scan gives them theirs, counted from their creation, and from then
on they are warned and escalated like any other ticket: once each, never a flood."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from mailgate import tickets
from mailgate.app import App
from mailgate.ingest.history import History
from mailgate.ingest.pipeline import ingest
from mailgate.models import Event, Status, Ticket
from tests.mails import mail
from tests.sla_desk import at, change, desk, mails, new_ticket, run_daemon_clock, scan, sent_at, the_ticket

# No target anywhere: the deadlines an older release stored, none.
WITHOUT_SLA = {"targets": {}, "tickets": {"first_response_hours": {}}}


def upgraded(app: App, tmp_path, db_url, when: datetime, **sla: object) -> App:
    """The same database under a release (and config) with the SLA targets."""
    app.close()
    return desk(tmp_path, db_url, when=when, **sla)


def deadline_events(app: App, number: int) -> list[Event]:
    with app.sessions() as s:
        ticket_id = s.scalar(select(Ticket.id).where(Ticket.number == number))
        return list(s.scalars(select(Event).where(Event.ticket_id == ticket_id, Event.action == "deadlines")))


def with_deadlines(app: App, when: datetime) -> int:
    """Scan at `when`; how many tickets have deadlines then."""
    scan(app, when)
    with app.sessions() as s:
        return len([due for due in s.scalars(select(Ticket.first_response_due)) if due is not None])


def test_a_ticket_from_before_the_sla_gets_its_deadlines_at_the_next_scan_and_is_warned_once(tmp_path, db_url) -> None:
    old = desk(tmp_path, db_url, when=at(30, 9), **WITHOUT_SLA)
    number = new_ticket(old)  # Monday 09:00, Alice's
    assert the_ticket(old, number).first_response_due is None
    app = upgraded(old, tmp_path, db_url, at(30, 9))
    scan(app, at(30, 9))
    t = the_ticket(app, number)
    assert t.first_response_due == at(30, 13) and t.resolution_due == at(2, 17)
    [event] = deadline_events(app, number)
    assert event.actor == "mailgate" and "set by the SLA scan" in event.evidence
    run_daemon_clock(app, at(30, 9), at(30, 14))
    assert sent_at(mails(app, "sla_warning")) == [("alice@example.com", at(30, 12))]
    assert sent_at(mails(app, "sla_escalation")) == [("boss@example.com", at(30, 13))]
    assert sum(scan(app, at(30, 14, 30)).values()) == 0  # a later scan changes nothing
    assert len(deadline_events(app, number)) == 1
    app.close()


def test_a_long_overdue_ticket_from_before_the_sla_escalates_once_per_target(tmp_path, db_url) -> None:
    old = desk(tmp_path, db_url, when=at(30, 9), **WITHOUT_SLA)
    number = new_ticket(old)
    app = upgraded(old, tmp_path, db_url, at(7, 10))  # a week later: both targets long breached
    run_daemon_clock(app, at(7, 10), at(7, 17))
    # The level each deadline has reached, once: not level 1 and then level 2, not a warning.
    escalations = mails(app, "sla_escalation")
    assert sent_at(escalations) == [("it-lead@example.com", at(7, 10))] * 2
    assert all("level 2" in row.headers["Subject"] for row in escalations)
    assert mails(app, "sla_warning") == []
    assert the_ticket(app, number).first_response_due == at(30, 13)
    app.close()


def test_imported_closed_and_resolved_tickets_get_no_deadlines(tmp_path, db_url) -> None:
    old = desk(tmp_path, db_url, when=at(30, 9), **WITHOUT_SLA)
    ingest(old, mail(subject="old one"), "import", history=History(close=False))
    for status in (Status.CLOSED, Status.RESOLVED):
        number = new_ticket(old, subject=f"{status}")
        change(old, number, lambda s, t, now, to=status: tickets.set_status(s, t, to, actor="alice@example.com",
                                                                            channel="test", now=now))  # fmt: skip
    app = upgraded(old, tmp_path, db_url, at(7, 10))
    scan(app, at(7, 10))
    with app.sessions() as s:
        assert s.scalars(select(Ticket.first_response_due)).all() == [None] * 3
    assert mails(app, "sla_escalation") == []
    app.close()


def test_the_upgrade_is_worked_off_in_bounded_runs(tmp_path, db_url) -> None:
    old = desk(tmp_path, db_url, when=at(30, 9), **WITHOUT_SLA)
    for n in range(5):
        new_ticket(old, subject=f"ticket {n}", sender=f"user{n}@example.com")
    app = upgraded(old, tmp_path, db_url, at(30, 9), scan_batch=2)
    assert [with_deadlines(app, at(30, 9, minute)) for minute in (0, 5, 10, 15)] == [2, 4, 5, 5]
    app.close()
