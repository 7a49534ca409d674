"""Two transports (or two daemons) ingesting at once never duplicate a mail or a ticket number."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Message, Outbox, Person, Ticket
from tests.mails import mail


def test_the_same_mail_ingested_concurrently_is_stored_once(app: App) -> None:
    raw = mail()
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = sorted(pool.map(lambda _: ingest(app, raw, "smtp").outcome, range(8)))
    assert outcomes == ["duplicate"] * 7 + ["new_ticket"]
    with app.sessions() as s:
        assert s.scalar(select(func.count(Message.id))) == 1
        assert s.scalar(select(func.count(Outbox.id))) == 2


def test_concurrent_new_mails_get_distinct_ticket_numbers(app: App) -> None:
    # Twenty first mails from one new person at once: one person row, twenty numbers, no gaps.
    mails = [mail(subject=f"problem {i}", sender="newcomer@example.com") for i in range(20)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda raw: ingest(app, raw, "smtp"), mails))
    assert sorted(r.ticket_number for r in results) == list(range(1, 21))
    with app.sessions() as s:
        assert s.scalar(select(func.count(Person.id)).where(Person.address == "newcomer@example.com")) == 1
        assert s.scalar(select(func.count(Ticket.id))) == 20
