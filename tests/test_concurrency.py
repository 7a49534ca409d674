"""Two transports (or two daemons) ingesting at once never duplicate a mail or a ticket number."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.ingest.pipeline import ingest
from mailgate.models import Message, Outbox, Person, Ticket
from tests.conftest import make_settings
from tests.mails import mail


def test_the_same_mail_ingested_concurrently_is_stored_once(app: App) -> None:
    raw = mail()
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = sorted(pool.map(lambda _: ingest(app, raw, "smtp").outcome, range(8)))
    assert outcomes == ["duplicate"] * 7 + ["new_ticket"]
    with app.sessions() as s:
        assert s.scalar(select(func.count(Message.id))) == 1
        assert s.scalar(select(func.count(Outbox.id))) == 2


# Limits the circuit breaker never reaches here: these tests are about concurrency (the breaker
# holds one sender's twentieth new ticket in a minute, see test_loops.py).
HIGH_LIMITS = {
    "per_sender": {"count": 1000, "window_minutes": 1},
    "per_address": {"count": 1000, "window_minutes": 1},
    "per_domain": {"count": 1000, "window_minutes": 1},
}


def test_concurrent_new_mails_get_distinct_ticket_numbers(tmp_path, db_url: str, clock: FixedClock) -> None:
    app = App.build(make_settings(tmp_path, db_url, breaker=HIGH_LIMITS), clock=clock)
    try:
        _twenty_first_mails_from_one_new_person(app)
    finally:
        app.close()


def _twenty_first_mails_from_one_new_person(app: App) -> None:
    # Twenty first mails from one new person at once: one person row, twenty numbers, no gaps.
    mails = [mail(subject=f"problem {i}", sender="newcomer@example.com") for i in range(20)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda raw: ingest(app, raw, "smtp"), mails))
    assert sorted(r.ticket_number for r in results) == list(range(1, 21))
    with app.sessions() as s:
        assert s.scalar(select(func.count(Person.id)).where(Person.address == "newcomer@example.com")) == 1
        assert s.scalar(select(func.count(Ticket.id))) == 20
