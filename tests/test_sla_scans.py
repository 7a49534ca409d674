"""The scans keep the desk's promises: each warning, escalation level, reminder, auto-resolve
and auto-close fires exactly once, on time, to the right person, and not at night. The clock
is moved, the scans run as the daemon runs them, and what is asserted is the mail in the outbox."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from sqlalchemy import select

from mailgate import tickets
from mailgate.ingest.history import History
from mailgate.ingest.pipeline import ingest
from mailgate.models import Status, Ticket
from mailgate.sla.rating import parse_rating
from tests.mails import mail
from tests.sla_desk import (
    MONDAY,
    PROVEN,
    at,
    change,
    desk,
    firings,
    mails,
    new_ticket,
    run_daemon_clock,
    scan,
    sent_at,
    the_ticket,
)


def test_the_assignee_is_warned_once_at_three_quarters_of_the_target(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url)
    new_ticket(app)  # Monday 09:00: first answer due 13:00, warning at 12:00
    run_daemon_clock(app, at(30, 9), at(30, 12, 55), step=timedelta(minutes=5))
    warnings = mails(app, "sla_warning")
    assert sent_at(warnings) == [("alice@example.com", at(30, 12))]
    body = " ".join(warnings[0].body.split())
    assert "first answer was promised by Monday 30 November 13:00" in body
    assert "#take" in body
    app.close()


def test_a_breach_escalates_to_the_managers_and_level_two_waits_for_the_morning(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url)
    new_ticket(app)  # due 13:00; level 2 four business hours later: 17:00, when the desk closes
    run_daemon_clock(app, at(30, 9), at(1, 12))
    escalations = mails(app, "sla_escalation")
    assert sent_at(escalations) == [
        ("boss@example.com", at(30, 13)),  # Alice's manager, from [[staff]]
        ("it-lead@example.com", at(1, 9)),  # Boss has no manager: sla.escalation_address, next morning
    ]
    assert "Eskalation" in escalations[0].headers["Subject"]  # Boss reads German
    assert "level 2" in escalations[1].headers["Subject"]
    app.close()


def test_a_team_lead_hears_first_and_an_answered_ticket_no_longer_escalates(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, teams={"network": {"lead": "lead@example.com"}})
    led = new_ticket(app, subject="Switch down")
    answered = new_ticket(app, subject="Printer")

    def team(s, t, now) -> None:
        t.team = "network"

    change(app, led, team)
    app.clock.set(at(30, 10).astimezone(UTC))
    # Alice's answer, proven hers: only that is a first response (a From header proves nothing).
    answer = mail(
        sender="alice@example.com", subject=f"Re: [HD #{answered}] Printer", body="On my way.\n", headers=PROVEN
    )
    ingest(app, answer, "smtp")
    run_daemon_clock(app, at(30, 12, 30), at(30, 14))
    assert [r.recipients[0] for r in mails(app, "sla_escalation")] == ["lead@example.com"]
    app.close()


@pytest.mark.parametrize(
    ("at_any_hour", "idle_at"),
    [([], at(1, 9)), (["idle"], at(30, 18))],
    ids=["waits for the next opening", "at any hour when the admin says so"],
)
def test_a_reminder_due_at_night(tmp_path, db_url, at_any_hour, idle_at) -> None:
    app = desk(tmp_path, db_url, when=at(30, 16), idle_after_hours=2, unassigned_after_hours=3, at_any_hour=at_any_hour)
    new_ticket(app, subject="quiet")  # idle from 16:00: due 18:00, after closing
    new_ticket(app, subject="nobody's", assignee=None)  # unassigned since 16:00: due 19:00
    run_daemon_clock(app, at(30, 16), at(1, 9, 30))
    assert sent_at(mails(app, "sla_idle")) == [("alice@example.com", idle_at)]
    assert sent_at(mails(app, "sla_unassigned")) == [("dispatch@example.com", at(1, 9))]
    app.close()


def test_a_team_with_hours_of_its_own_hears_in_its_hours_the_others_in_the_desks(tmp_path, db_url) -> None:
    afternoons = {day: "13:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}
    teams = {"ops": {"business_hours": "24x7"}, "afternoons": {"business_hours": afternoons}}
    app = desk(tmp_path, db_url, when=at(30, 16), idle_after_hours=2, teams=teams)
    numbers = {name: new_ticket(app, subject=name) for name in ("desk", "ops", "afternoons")}
    for name in ("ops", "afternoons"):
        change(app, numbers[name], lambda s, t, now, team=name: setattr(t, "team", team))
    run_daemon_clock(app, at(30, 16), at(1, 14))  # all idle from 16:00: due 18:00
    ids = {the_ticket(app, number).id: name for name, number in numbers.items()}
    sent = {ids[r.ticket_id]: r.created_at.astimezone(MONDAY.tzinfo) for r in mails(app, "sla_idle")}
    # ops at once (open day and night); the desk's own hours open at 09:00; the afternoon team's
    # at 13:00, although the desk's are open since 09:00.
    assert sent == {"ops": at(30, 18), "desk": at(1, 9), "afternoons": at(1, 13)}
    app.close()


def test_an_urgent_escalation_goes_at_once_the_others_next_morning(tmp_path, db_url) -> None:
    # Both are due at 17:00 sharp, when the desk closes.
    app = desk(
        tmp_path,
        db_url,
        when=at(30, 13),
        targets={"normal": {"first_response": "4h"}, "urgent": {"first_response": "1h"}},
    )
    normal = new_ticket(app, subject="normal")
    app.clock.set(at(30, 16).astimezone(UTC))
    urgent = new_ticket(app, subject="urgent")

    def make_urgent(s, t, now) -> None:
        t.priority = "urgent"

    change(app, urgent, make_urgent)
    run_daemon_clock(app, at(30, 16), at(1, 10))
    escalations = {r.ticket_id: r.created_at.astimezone(MONDAY.tzinfo) for r in mails(app, "sla_escalation")}
    assert escalations == {the_ticket(app, urgent).id: at(30, 17), the_ticket(app, normal).id: at(1, 9)}
    app.close()


def test_an_unassigned_ticket_goes_back_to_the_dispatcher_once(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, unassigned_after_hours=2)
    new_ticket(app, assignee=None)
    new_ticket(app)  # assigned: no reminder
    run_daemon_clock(app, at(30, 9), at(30, 15))
    assert sent_at(mails(app, "sla_unassigned")) == [("dispatch@example.com", at(30, 11))]
    app.close()


def test_an_idle_ticket_reminds_its_assignee_once_per_quiet_spell(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, idle_after_hours=3)
    number = new_ticket(app)
    run_daemon_clock(app, at(30, 9), at(30, 13))
    app.clock.set(at(30, 13, 10).astimezone(UTC))
    ingest(app, mail(subject=f"Re: [HD #{number}] Printer", body="Any news?\n"), "smtp")
    run_daemon_clock(app, at(30, 13, 15), at(1, 10))
    # 12:00, and three hours after the requester's mail at 13:10: 16:10, at the 16:15 run
    assert sent_at(mails(app, "sla_idle")) == [
        ("alice@example.com", at(30, 12)),
        ("alice@example.com", at(30, 16, 15)),
    ]
    app.close()


def test_a_pending_requester_is_reminded_then_the_ticket_resolves_with_a_mail(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(30, 10), pending_reminder_days=1, pending_reminders=2)
    number = new_ticket(app)
    change(app, number, lambda s, t, now: tickets.set_pending(s, t, None, actor="alice@example.com",
                                                               channel="test", now=now))  # fmt: skip
    run_daemon_clock(app, at(30, 10), at(4, 12), step=timedelta(minutes=30))
    assert sent_at(mails(app, "sla_pending_reminder")) == [
        ("dana@example.com", at(1, 10)),
        ("dana@example.com", at(2, 10)),
    ]
    resolved = mails(app, "sla_auto_resolved")
    assert sent_at(resolved) == [("dana@example.com", at(3, 10))]
    assert "reminded you 2 times" in " ".join(resolved[0].body.split())
    assert the_ticket(app, number).status == Status.RESOLVED
    app.close()


def test_a_resolved_ticket_closes_after_the_days_at_the_next_opening_and_asks_a_rating(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(3, 10), close_resolved_after_days=2)
    number = new_ticket(app)
    change(app, number, lambda s, t, now: tickets.set_status(s, t, Status.RESOLVED, actor="alice@example.com",
                                                              channel="test", now=now))  # fmt: skip
    run_daemon_clock(app, at(3, 10), at(7, 10), step=timedelta(minutes=30))  # due Saturday 10:00
    closed = mails(app, "sla_closed")
    assert sent_at(closed) == [("dana@example.com", at(7, 9))]
    assert "#rate 5" in closed[0].body
    assert the_ticket(app, number).status == Status.CLOSED
    app.close()


def test_pending_until_a_date_opens_the_ticket_again_then_and_moves_its_deadline(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(30, 10))
    number = new_ticket(app)  # first answer due 14:00
    until = at(1, 10).astimezone(UTC)
    change(app, number, lambda s, t, now: tickets.set_pending(s, t, until, actor="alice@example.com",
                                                               channel="test", now=now))  # fmt: skip
    run_daemon_clock(app, at(30, 10), at(1, 11))
    t = the_ticket(app, number)
    assert t.status == Status.OPEN and t.pending_until is None
    # Pending 10:00 Monday to 10:00 Tuesday: 8 business hours later, Tuesday 14:00.
    assert t.first_response_due.astimezone(MONDAY.tzinfo) == at(1, 14)
    app.close()


def test_imported_and_closed_tickets_never_escalate(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url)
    ingest(app, mail(subject="old one"), "import", history=History(close=False))
    closed = new_ticket(app, subject="done")
    change(app, closed, lambda s, t, now: tickets.set_status(s, t, Status.CLOSED, actor="alice@example.com",
                                                              channel="test", now=now))  # fmt: skip
    with app.sessions() as s:
        assert s.scalar(select(Ticket).where(Ticket.subject == "old one")).status != Status.CLOSED
    run_daemon_clock(app, at(30, 9), at(2, 17), step=timedelta(hours=1))
    assert mails(app, "sla_escalation") == [] and mails(app, "sla_warning") == []
    app.close()


def test_a_weekend_without_scans_catches_up_with_one_escalation_per_ticket(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(4, 12))  # Friday noon: due 16:00, level 2 Monday 12:00
    for n in range(3):
        new_ticket(app, subject=f"ticket {n}")
    scan(app, at(4, 15, 30))  # the last run before the daemon stopped: the warnings
    run_daemon_clock(app, at(7, 9), at(7, 10))  # Monday: the daemon is back
    escalations = mails(app, "sla_escalation")
    assert sent_at(escalations) == [("boss@example.com", at(7, 9))] * 3
    assert len([f for f in firings(app) if f.kind.startswith("escalation")]) == 3
    app.close()


@pytest.mark.parametrize(("language", "expected"), [("en", "What is expected"), ("de", "Was erwartet wird")])
def test_every_sla_mail_says_what_is_expected_in_the_readers_language(tmp_path, db_url, language, expected) -> None:
    app = desk(
        tmp_path,
        db_url,
        language=language,
        unassigned_after_hours=2,
        idle_after_hours=4,
        pending_reminder_days=1,
        pending_reminders=1,
        close_resolved_after_days=1,
    )
    new_ticket(app, assignee=None, subject="nobody's")  # unassigned, warned, escalated
    new_ticket(app, subject="quiet", sender="erin@example.com")  # idle
    pending = new_ticket(app, subject="waiting", sender="fred@example.com")
    change(app, pending, lambda s, t, now: tickets.set_pending(s, t, None, actor="alice@example.com",
                                                                channel="test", now=now))  # fmt: skip
    done = new_ticket(app, subject="done", sender="gina@example.com")
    change(app, done, lambda s, t, now: tickets.set_status(s, t, Status.RESOLVED, actor="alice@example.com",
                                                            channel="test", now=now))  # fmt: skip
    run_daemon_clock(app, at(30, 9), at(2, 12), step=timedelta(minutes=30))
    kinds = ("sla_warning", "sla_escalation", "sla_unassigned", "sla_idle", "sla_pending_reminder",
             "sla_auto_resolved", "sla_closed")  # fmt: skip
    for kind in kinds:
        rows = mails(app, kind)
        assert rows, f"no {kind}"
        for row in rows:
            if row.recipients[0] == "boss@example.com":
                continue  # Boss reads German on the English desk
            assert expected in row.body, (kind, row.body)
            assert "[HD #" in row.headers["Subject"]
    app.close()


def test_each_run_is_bounded_and_the_next_runs_work_off_the_rest(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, scan_batch=2)
    for n in range(5):
        new_ticket(app, subject=f"ticket {n}", sender=f"user{n}@example.com")
    counts = [scan(app, at(30, 13, minute))["escalate"] for minute in (0, 5, 10, 15)]
    assert counts == [2, 2, 1, 0]
    assert len(mails(app, "sla_escalation")) == 5
    app.close()


def test_a_pending_ticket_neither_warns_nor_escalates(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url)
    number = new_ticket(app)
    change(app, number, lambda s, t, now: tickets.set_pending(s, t, None, actor="alice@example.com",
                                                               channel="test", now=now))  # fmt: skip
    run_daemon_clock(app, at(30, 9), at(2, 17), step=timedelta(hours=1))
    assert mails(app, "sla_escalation") == [] and mails(app, "sla_warning") == []
    app.close()


def test_parse_rating_reads_what_people_write() -> None:
    assert parse_rating("#rate 4") == 4
    assert parse_rating("#RATE: 5/5\nthanks") == 5
    assert parse_rating("5") == 5
    assert parse_rating("3 stars!") == 3
    assert parse_rating("Good") == 4
    assert parse_rating("sehr gut.") == 5
    assert parse_rating("#rate 9") is None
    assert parse_rating("The printer on floor 3 works") is None
    assert parse_rating("\n> 5\n") is None
    assert parse_rating("") is None
