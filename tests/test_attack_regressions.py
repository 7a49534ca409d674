"""What an attack run on this release found, each as the behaviour a user relies on: a hostile
header never leaves a mail retrying, a forger cannot get the desk to answer someone else or
silence a proven sender, and a lifted hold does not make a sender's mail unstorable."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.ingest import breaker
from mailgate.ingest.pipeline import Outcome, ingest
from mailgate.models import Outbox
from mailgate.outgoing.compose import local_time
from tests.conftest import make_settings
from tests.mails import mail

MTA = "mx.example.com"


def _acks(app: App) -> list[Outbox]:
    with app.sessions() as s:
        return list(s.scalars(select(Outbox).where(Outbox.kind == "ack")))


def _trusting(tmp_path: Path, db_url: str, clock) -> App:
    settings = make_settings(tmp_path, db_url, acknowledgements={"trusted_authserv_ids": [MTA]})
    return App.build(settings, clock=clock)


def _by_mta(result: str) -> bytes:
    return (
        f"Authentication-Results: {MTA}; {result}\r\n"
        f"Received: from relay.example.org by {MTA}; Mon, 23 Nov 2026 09:00:00 +0000\r\n"
    ).encode()


@pytest.mark.parametrize("header", ["Precedence", "List-Id", "Auto-Submitted", "X-Failed-Recipients"])
def test_a_word_in_a_codec_that_is_not_text_is_read_as_unknown_not_retried(app: App, header: str) -> None:
    raw = f"{header}: =?zlib?b?eJzLSM3JyQcABiwCFQ==?=\r\n".encode() + mail()
    # Stored (as a ticket, or as automatic mail or a bounce, as the header says), not raised
    # as a temporary failure that the spool and the MTA retry for days.
    assert ingest(app, raw, "smtp").outcome not in (Outcome.QUARANTINED,)


@pytest.mark.parametrize("date", ["Fri, 31 Dec 9999 23:59:59 -1200", "Mon, 01 Jan 0001 00:00:00 +1400"])
def test_a_date_at_the_calendars_end_is_no_date(app: App, date: str) -> None:
    head, _, body = mail().partition(b"\r\n\r\n")
    raw = b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"Date:"))
    assert ingest(app, raw + f"\r\nDate: {date}\r\n\r\n".encode() + body, "smtp").outcome == Outcome.NEW_TICKET


def test_an_unusable_from_does_not_send_the_acknowledgement_to_reply_to(tmp_path: Path, db_url: str, clock) -> None:
    app = _trusting(tmp_path, db_url, clock)
    try:
        raw = _by_mta("dmarc=pass header.from=attacker.example") + mail(
            sender=f"<{'a' * 330}@attacker.example>", headers={"Reply-To": "ceo@bank.example"}
        )
        result = ingest(app, raw, "smtp")
        assert result.outcome == Outcome.NEW_TICKET  # still a ticket: nothing is lost
        assert _acks(app) == []
        with app.sessions() as s:
            assert s.scalars(select(Outbox)).all()  # the dispatcher is told
    finally:
        app.close()


def test_a_dmarc_pass_for_another_from_does_not_clear_a_failure(tmp_path: Path, db_url: str, clock) -> None:
    app = _trusting(tmp_path, db_url, clock)
    try:
        raw = _by_mta("spf=fail smtp.mailfrom=bank.example; dmarc=pass header.from=attacker.example")
        ingest(app, raw + mail(sender="ceo@bank.example"), "smtp")
        assert _acks(app) == []
    finally:
        app.close()


def test_an_unreadable_trusted_field_still_marks_where_the_mtas_fields_end(tmp_path: Path, db_url: str, clock) -> None:
    app = _trusting(tmp_path, db_url, clock)
    try:
        unreadable = (
            f"Authentication-Results: {MTA}; dmarc=fail header.from=bank.example; spf=fail smtp.mailfrom=<>\r\n"
        )
        forged = f"Authentication-Results: {MTA}; dmarc=pass header.from=bank.example\r\n"
        raw = (unreadable + f"Received: from x by {MTA}; Mon, 23 Nov 2026 09:00:00 +0000\r\n" + forged).encode()
        ingest(app, raw + mail(sender="ceo@bank.example"), "smtp")
        with app.sessions() as s:
            rows = list(s.scalars(select(Outbox).where(Outbox.kind == "ack")))
        # The forged pass below our Received proves nothing: the sender is not counted as proven.
        assert all(not r.rcpt_proven for r in rows)
    finally:
        app.close()


@pytest.mark.parametrize("sender", ['"support"@example.com', "support@example.com.", "Dispatch@Example.COM."])
def test_our_own_addresses_in_any_form_open_no_ticket(app: App, sender: str) -> None:
    assert ingest(app, mail(sender=sender), "smtp").outcome == Outcome.AUTO
    assert _acks(app) == []


def test_quoted_forms_of_one_mailbox_share_its_limits(app: App, clock) -> None:
    forms = ["bot", '"bot"', '"b\\ot"', '"bot+1"', "BOT", '"bot+2"']
    for n in range(3):
        for form in forms:
            ingest(app, mail(sender=f"{form}@gmail.com", subject=f"auto {n} {form}"), "smtp")
            clock.advance(timedelta(seconds=5))
    assert len(_acks(app)) <= app.settings.limits.acks_per_sender


def test_forgeries_cannot_hold_a_proven_sender_of_their_domain(tmp_path: Path, db_url: str, clock) -> None:
    app = _trusting(tmp_path, db_url, clock)
    try:
        for n in range(app.settings.breaker.per_domain.count + 2):
            forged = _by_mta("dmarc=fail header.from=customer.example") + mail(sender=f"forged{n}@customer.example")
            ingest(app, forged, "smtp")
            clock.advance(timedelta(seconds=10))
        real = _by_mta("dmarc=pass header.from=customer.example") + mail(sender="ceo@customer.example")
        assert ingest(app, real, "smtp").outcome == Outcome.NEW_TICKET
    finally:
        app.close()


def test_a_hold_that_trips_again_after_a_lift_still_stores_the_mail(app: App, clock) -> None:
    def one(n: int) -> Outcome:
        outcome = ingest(app, mail(sender="ann@r.example", subject=f"question {n}"), "smtp").outcome
        clock.advance(timedelta(seconds=30))
        return outcome

    outcomes = [one(n) for n in range(app.settings.breaker.per_sender.count + 1)]
    assert outcomes[-1] == Outcome.HELD
    with app.sessions() as session, session.begin():
        assert breaker.lift(session, "ann@r.example", app.clock.now(), by="test")
    # The domain is still over its limit, trips at once, and warns again: on the same ticket, to
    # the same dispatcher, with a Message-ID of its own.
    assert [one(n) for n in range(20, 23)] == [Outcome.HELD] * 3
    with app.sessions() as s:
        warnings = list(s.scalars(select(Outbox).where(Outbox.kind == "breaker_warning")))
    assert len({w.message_id for w in warnings}) == len(warnings) >= 2


def test_a_language_folder_babel_does_not_know_falls_back_to_english_dates(app: App) -> None:
    assert local_time(app.settings, app.clock.now(), "cz").endswith("(UTC)")
    assert local_time(app.settings, app.clock.now(), "cz").split()[0] == "Monday"
