"""The requester answers the auto-close mail's "how did we do?": the rating is stored on the
ticket with the proof, a rating alone reopens nothing and goes to nobody, a rating with more to
say is a reply too, and a forged "1" rates nothing. Through ingest(), replying to the real mail."""

from __future__ import annotations

import shutil
from datetime import timedelta

from sqlalchemy import func, select

from mailgate import tickets
from mailgate.ingest.pipeline import ingest
from mailgate.models import Event, Outbox, Status, Ticket
from tests.desk import reply_address
from tests.mails import mail
from tests.sla_desk import at, change, desk, mails, new_ticket, run_daemon_clock, the_ticket
from tests.test_sla_cli import run
from tests.test_sla_concurrency import _config


def _closed(app) -> tuple[int, Outbox]:
    """A ticket resolved Thursday and closed by the scan on Monday 7 December 09:00."""
    number = new_ticket(app)
    change(app, number, lambda s, t, now: tickets.set_status(s, t, Status.RESOLVED, actor="alice@example.com",
                                                              channel="test", now=now))  # fmt: skip
    run_daemon_clock(app, at(3, 10), at(7, 9), step=timedelta(hours=1))
    (closing,) = mails(app, "sla_closed")
    assert the_ticket(app, number).status == Status.CLOSED
    return number, closing


def _reply(app, closing: Outbox, body: str, *, to: str | None = None) -> None:
    quoted = "".join(f"> {line}\n" for line in closing.body.splitlines())
    raw = mail(
        to=to or reply_address(closing),
        subject=f"Re: {closing.headers['Subject']}",
        body=f"{body}\n\nOn Mon, 7 Dec 2026, the help desk wrote:\n{quoted}",
    )
    ingest(app, raw, "smtp")


def _rated(app, number: int) -> list[Event]:
    with app.sessions() as s:
        ticket = s.scalar(select(Ticket).where(Ticket.number == number))
        return list(s.scalars(select(Event).where(Event.ticket_id == ticket.id, Event.action == "rated")))


def test_a_rating_alone_is_stored_with_its_proof_and_reopens_nothing(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(3, 10), close_resolved_after_days=2)
    number, closing = _closed(app)
    _reply(app, closing, "5")
    ticket = the_ticket(app, number)
    assert (ticket.rating, ticket.status) == (5, Status.CLOSED)
    assert ticket.rated_at is not None
    (event,) = _rated(app, number)
    assert (event.actor, event.new) == ("dana@example.com", "5") and "token" in event.evidence
    assert mails(app, "requester_reply") == []  # Alice is not told of a "5"
    (thanks,) = mails(app, "rating_thanks")
    assert thanks.recipients == ["dana@example.com"]
    assert "rating of 5 out of 5" in " ".join(thanks.body.split())
    app.close()


def test_a_word_or_the_command_rates_too_and_a_later_rating_replaces_it(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(3, 10), close_resolved_after_days=2)
    number, closing = _closed(app)
    _reply(app, closing, "good")
    assert the_ticket(app, number).rating == 4
    _reply(app, closing, "#rate 2")
    ticket = the_ticket(app, number)
    assert (ticket.rating, ticket.status) == (2, Status.CLOSED)
    assert [(e.old, e.new) for e in _rated(app, number)] == [(None, "4"), ("4", "2")]
    app.close()


def test_a_rating_with_more_to_say_is_a_reply_that_reopens_and_is_still_stored(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(3, 10), close_resolved_after_days=2)
    number, closing = _closed(app)
    _reply(app, closing, "3\nIt works, but the printer jams again since this morning.")
    ticket = the_ticket(app, number)
    assert (ticket.rating, ticket.status) == (3, Status.OPEN)
    (relayed,) = mails(app, "requester_reply")
    assert relayed.recipients == ["alice@example.com"] and "jams again" in relayed.body
    assert mails(app, "rating_thanks") == []  # Alice answers that
    app.close()


def test_the_thank_you_is_in_the_requester_s_language_and_rate_limited(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(3, 10), close_resolved_after_days=2, language="de")
    number, closing = _closed(app)
    limit = app.settings.limits.acks_per_sender
    for rating in [1, 2, 3, 4, 5, 1, 2, 3, 4, 5][: limit + 2]:
        _reply(app, closing, f"#rate {rating}")
    thanks = mails(app, "rating_thanks")
    assert len(thanks) == limit
    assert "Danke" in thanks[0].headers["Subject"] and "Bewertung mit 1 von 5" in " ".join(thanks[0].body.split())
    assert the_ticket(app, number).rating == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5][limit + 1]  # every rating counts
    app.close()


def test_a_late_rating_beyond_the_reopen_window_opens_no_follow_up(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(3, 10), close_resolved_after_days=2)
    number, closing = _closed(app)
    app.clock.set(app.clock.now() + timedelta(days=30))  # tickets.reopen_window_days is 14
    _reply(app, closing, "5 stars")
    assert the_ticket(app, number).rating == 5
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == 1
    app.close()


def test_a_forged_rating_rates_nobody_s_ticket(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, when=at(3, 10), close_resolved_after_days=2)
    number, closing = _closed(app)
    _reply(app, closing, "1", to="support@example.com")  # the tag in the subject, no token, no pass
    ticket = the_ticket(app, number)
    assert (ticket.rating, ticket.status) == (None, Status.CLOSED)
    assert _rated(app, number) == []
    app.close()


def test_tickets_show_and_sla_show_give_the_rating(tmp_path, sqlite_template) -> None:
    db = tmp_path / "mailgate.db"
    shutil.copy(sqlite_template, db)
    app = desk(tmp_path, f"sqlite:///{db}", when=at(3, 10), close_resolved_after_days=2)
    config = _config(tmp_path / "mailgate.toml", app)
    number, closing = _closed(app)
    _reply(app, closing, "5")
    shown = run(config, "tickets", "show", str(number))
    assert shown.exit_code == 0, shown.output
    assert "rated 5/5 by the requester 2026-12-07 09:00" in shown.output
    sla = run(config, "sla", "show", str(number))
    assert "rating:          5/5 by the requester, Mon 2026-12-07 09:00" in sla.output
    app.close()
