"""Quarantine: mail kept with its bytes and the reason, and released again by a retry."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from mailgate import quarantine
from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Quarantine, Ticket
from mailgate.quarantine import StillQuarantined, retry
from tests.mails import mail


def rows(app: App) -> list[Quarantine]:
    with app.sessions() as s:
        return list(s.scalars(select(Quarantine).order_by(Quarantine.id)))


def test_a_mail_put_aside_is_released_as_a_ticket_by_a_retry(app: App) -> None:
    # What the spool does with a mail the database would not take for a day.
    raw = mail(subject="VPN down")
    qid = quarantine.put(app, raw, "smtp", "could not be stored after 5 attempts", app.clock.now())
    assert [(r.raw, r.reason) for r in rows(app)] == [(raw, "could not be stored after 5 attempts")]

    assert quarantine.retry(app, qid) == "new_ticket 1"
    with app.sessions() as s:
        assert s.scalar(select(Ticket.subject)) == "VPN down"
    (row,) = rows(app)
    assert row.released_as == "new_ticket 1" and row.released_at == app.clock.now()
    with pytest.raises(quarantine.NotRetried, match="already released as new_ticket 1"):
        quarantine.retry(app, qid)


def test_a_retry_of_a_mail_stored_meanwhile_releases_it_as_a_duplicate(app: App) -> None:
    raw = mail()
    number = ingest(app, raw, "imap:support").ticket_number
    qid = quarantine.put(app, raw, "smtp", "could not be stored after 5 attempts", app.clock.now())
    assert quarantine.retry(app, qid) == f"duplicate {number}"


def test_a_mail_still_unparseable_stays_quarantined_once(app: App) -> None:
    garbage = b"this is not a mail at all\n"
    first = ingest(app, garbage, "pipe")
    with pytest.raises(quarantine.StillQuarantined, match="no header section"):
        quarantine.retry(app, first.quarantine_id)
    (row,) = rows(app)
    assert row.released_at is None and row.raw == garbage


def test_there_is_nothing_to_retry_under_an_unknown_id(app: App) -> None:
    with pytest.raises(quarantine.NotRetried, match="no quarantined mail 42"):
        quarantine.retry(app, 42)


def test_a_failed_retry_logs_only_the_id_that_exists(app: App, caplog: pytest.LogCaptureFixture) -> None:
    first = ingest(app, b"this is not a mail\n", "pipe")
    with caplog.at_level("INFO", logger="mailgate.quarantine"), pytest.raises(StillQuarantined):
        retry(app, first.quarantine_id)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"quarantine id={first.quarantine_id} retried, still quarantined" in logged
    ids = {int(m) for m in re.findall(r"id=(\d+)", logged)}
    assert ids == {first.quarantine_id}  # no id of the retry's own row, which is removed again
