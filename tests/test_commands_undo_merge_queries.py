"""#undo, #merge (later mail follows), #link, and the queries #mine, #queue and #show."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Message, Status, Ticket
from tests.desk import REQUESTER, command, desk, events, open_ticket, receipt, rows, ticket
from tests.mails import mail


@pytest.fixture
def app(tmp_path, db_url, clock):
    application = desk(tmp_path, db_url, clock)
    yield application
    application.close()


def test_undo_reverts_the_senders_last_command_mail(app: App, clock) -> None:
    number = open_ticket(app)
    command(app, number, "#priority low")
    clock.advance(timedelta(minutes=5))
    command(app, number, "#assign alice\n#priority urgent\n#team network\n#cc add frank@example.org")
    clock.advance(timedelta(minutes=20))

    assert command(app, number, "#undo").outcome == "reply"

    t = ticket(app, number)
    assert (t.assignee, t.priority, t.team, t.status) == (None, "low", None, Status.NEW)
    body = receipt(app).body
    assert "priority: urgent -> low" in body
    assert "assignee: alice@example.com -> -" in body
    assert "cc: frank@example.org -> -" in body
    assert events(app, number, "undone")


def test_undo_outside_the_window_or_of_another_persons_mail_does_nothing(app: App, clock) -> None:
    number = open_ticket(app)
    command(app, number, "#team network\n#priority high")
    result = command(app, number, "#undo", sender="alice@example.com")  # alice sent no command here
    assert result.outcome == "refused"
    assert "nothing to undo" in receipt(app, "alice@example.com").body
    clock.advance(timedelta(minutes=31))  # [commands] undo_window_minutes = 30
    assert command(app, number, "#undo").outcome == "refused"
    assert ticket(app, number).priority == "high"


def test_merge_closes_the_ticket_and_later_mail_to_it_goes_on_the_target(app: App) -> None:
    target = open_ticket(app, subject="Printer jams")
    duplicate = ingest(app, mail(sender="erin@example.com", subject="printer again"), "smtp").ticket_number

    command(app, duplicate, f"#merge {target}")

    assert ticket(app, duplicate).status == Status.CLOSED
    ack = next(r for r in rows(app, "ack", "erin@example.com") if r.ticket_id == ticket(app, duplicate).id)
    to = ack.headers["Reply-To"].split("<")[1].rstrip(">")
    later = ingest(app, mail(sender="erin@example.com", to=to, subject=f"Re: [HD #{duplicate}]"), "smtp")
    assert later.outcome == "reply"
    assert later.ticket_number == target
    assert any(e.field == "merged_from" for e in events(app, target))


def test_undo_of_a_merge_lets_later_mail_go_on_the_ticket_again(app: App) -> None:
    target = open_ticket(app)
    other = open_ticket(app, subject="the same")
    command(app, other, f"#merge {target}")
    assert ticket(app, other).status == Status.CLOSED
    command(app, other, "#undo")  # on the target's thread now: the merge is followed
    t = ticket(app, other)
    assert (t.merged_into_id, t.status) == (None, Status.NEW)


def test_link_relates_two_tickets(app: App) -> None:
    one, two = open_ticket(app), open_ticket(app, subject="two")
    command(app, one, f"#link {two}")
    assert any(e.field == "related" and e.new == str(two) for e in events(app, one))


def test_mine_queue_and_show_are_answered_by_a_digest(app: App) -> None:
    first = open_ticket(app, subject="VPN down")
    second = open_ticket(app, subject="Wifi slow")
    open_ticket(app, subject="Printer jams")
    command(app, first, "#assign alice\n#team network")
    command(app, second, "#team network")

    command(app, first, f"#mine\n#queue network\n#show {second}", sender="alice@example.com")

    digest = receipt(app, "alice@example.com", "command_digest")
    assert digest.headers["Auto-Submitted"] == "auto-replied"
    mine, queue, show = digest.body.split("\n\n")[:3]
    assert "assigned to you" in mine and "VPN down" in mine and "Wifi slow" not in mine
    assert "team network" in queue and "VPN down" in queue and "Wifi slow" in queue and "Printer" not in queue
    assert f"HD #{second}: Wifi slow" in show
    # Questions change nothing and are stored on the ticket like any mail.
    with app.sessions() as s:
        assert s.scalar(select(Message).where(Message.message_id == digest.headers["In-Reply-To"].strip("<>")))


def test_the_dispatchers_queue_is_the_unassigned_tickets_and_is_bounded(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, commands={"digest_tickets": 2})
    try:
        numbers = [open_ticket(app, subject=f"request {n}") for n in range(3)]
        command(app, numbers[0], "#queue")
        body = receipt(app, kind="command_digest").body
        assert "unassigned" in body
        assert "request 0" in body and "request 1" in body and "request 2" not in body
        assert "only the first 2" in body
    finally:
        app.close()


def test_an_agent_sees_no_other_teams_queue_and_no_ticket_they_do_not_work_on(app: App) -> None:
    number = open_ticket(app)
    other = open_ticket(app, subject="secret")
    assert command(app, number, "#queue printers", sender="alice@example.com").outcome == "refused"
    assert command(app, number, f"#show {other}", sender="alice@example.com").outcome == "refused"
    assert "not allowed" in receipt(app, "alice@example.com").body


def test_a_requesters_reply_to_a_merged_ticket_reaches_the_target_with_its_people(app: App) -> None:
    target = open_ticket(app)
    merged = open_ticket(app, subject="again")
    command(app, merged, f"#merge {target}")
    result = command(app, merged, "It is still broken.", sender=REQUESTER, proof="token")
    assert result.ticket_number == target
    with app.sessions() as s:
        assert s.scalar(select(Ticket).where(Ticket.number == target)).messages[-1].text_new == "It is still broken."


def test_a_ticket_pending_until_a_day_is_open_again_when_it_comes(app: App, clock) -> None:
    from mailgate.sla.scans import resume_pending

    number = open_ticket(app)
    other = open_ticket(app, subject="later")
    command(app, number, "#pending until 2026-11-25")  # the clock starts on Monday 2026-11-23
    command(app, other, "#pending until 2026-11-30")
    # The SLA scan the daemon runs (sla/scans.py) opens it again when the day comes.
    with app.sessions() as s, s.begin():
        assert resume_pending(s, app.settings, clock.now()) == 0
    clock.advance(timedelta(days=2))
    with app.sessions() as s, s.begin():
        assert resume_pending(s, app.settings, clock.now()) == 1
    assert ticket(app, number).status == Status.OPEN
    assert ticket(app, other).status == Status.PENDING
