"""Outgoing mail in the reader's language: the desk's default, the one a request asks for, or a
staff member's own; dates in that language too; a language without templates is a config error."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.config import ConfigError, load_settings
from mailgate.ingest.pipeline import ingest
from mailgate.models import Outbox
from tests.conftest import make_settings
from tests.mails import mail


def _queued(app: App) -> dict[str, Outbox]:
    with app.sessions() as session:
        return {row.kind: row for row in session.scalars(select(Outbox))}


def _desk(tmp_path: Path, db_url: str, clock, **overrides: object) -> App:
    return App.build(make_settings(tmp_path, db_url, **overrides), clock=clock)


def _mail_to(tmp_path: Path, db_url: str, clock, raw: bytes, **overrides: object) -> dict[str, Outbox]:
    """What a desk configured with `overrides` queues for one new mail, by kind."""
    app = _desk(tmp_path, db_url, clock, **overrides)
    try:
        ingest(app, raw, "smtp")
        return _queued(app)
    finally:
        app.close()


def test_a_german_desk_writes_german_with_german_dates(tmp_path: Path, db_url: str, clock) -> None:
    rows = _mail_to(
        tmp_path,
        db_url,
        clock,
        mail(subject="Drucker streikt"),
        tickets={"language": "de", "timezone": "Europe/Berlin"},
    )
    ack = rows["ack"].body
    assert ack.startswith("Guten Tag Dana Smith,\n\nwir haben Ihre Anfrage erhalten")
    # START is Monday 23 November 2026, 10:00 in Berlin; 8 business hours (09:00-17:00) later
    # is Tuesday 10:00.
    assert "Sie erhalten eine Antwort bis Dienstag, 24. November, 10:00 Uhr (Europe/Berlin)" in ack
    notice = rows["dispatcher_new"]
    assert notice.headers["Subject"].startswith("[HD #1] Neu: Drucker streikt")
    assert "Nicht zugewiesen" in notice.body and "Montag, 23. November" in notice.body


def test_a_request_in_german_is_acknowledged_in_german_by_an_english_desk(tmp_path: Path, db_url: str, clock) -> None:
    app = _desk(tmp_path, db_url, clock)
    try:
        ingest(app, b"Content-Language: de-DE\r\n" + mail(subject="Drucker"), "smtp")  # as Outlook writes it
        ingest(
            app, mail(sender="erik@example.com", subject="Printer", headers={"Accept-Language": "fr, en;q=0.5"}), "smtp"
        )
        with app.sessions() as session:
            acks = {r.recipients[0]: r.body for r in session.scalars(select(Outbox).where(Outbox.kind == "ack"))}
            notices = [r.body for r in session.scalars(select(Outbox).where(Outbox.kind == "dispatcher_new"))]
    finally:
        app.close()
    assert acks["dana@example.com"].startswith("Guten Tag")
    assert acks["erik@example.com"].startswith("Hello")  # French is not shipped: the desk's English
    assert all(n.startswith("From ") for n in notices)  # the dispatcher reads the desk's language


def test_a_staff_member_gets_their_own_language(tmp_path: Path, db_url: str, clock) -> None:
    staff = [{"address": "dispatch@example.com", "name": "Dispatcher", "role": "dispatcher", "language": "de"}]
    rows = _mail_to(tmp_path, db_url, clock, mail(), staff=staff)
    assert rows["dispatcher_new"].body.startswith("Von Dana Smith")
    assert rows["ack"].body.startswith("Hello Dana Smith")


def test_a_site_language_comes_from_its_templates(tmp_path: Path, db_url: str, clock) -> None:
    site = tmp_path / "site"
    (site / "fr" / "ack").mkdir(parents=True)
    (site / "fr" / "ack" / "body.txt").write_text("Bonjour {{ recipient.name }}, réponse avant {{ due }}.\n")
    rows = _mail_to(tmp_path, db_url, clock, mail(), templates_path=site, tickets={"language": "fr"})
    assert rows["ack"].body.startswith("Bonjour Dana Smith, réponse avant 23 nov. 2026")
    assert rows["dispatcher_new"].body.startswith("From ")  # no French notice: the English one


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[tickets]\nlanguage = "fr"\n', "tickets.language = 'fr'"),
        ('[[staff]]\naddress = "a@x.org"\nlanguage = "xx"\n', "staff.0.language = 'xx'"),
    ],
)
def test_a_language_without_templates_is_refused_by_name(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert key in str(info.value) and "expected one of de, en" in str(info.value)


def test_a_language_refused_with_q0_is_not_chosen(tmp_path: Path, db_url: str, clock) -> None:
    raw = b"Accept-Language: de;q=0, en\r\n" + mail()
    assert _mail_to(tmp_path, db_url, clock, raw)["ack"].body.startswith("Hello")


def test_a_german_dispatcher_reads_why_a_mail_was_not_acknowledged_and_held_in_german(
    tmp_path: Path, db_url: str, clock
) -> None:
    # The reasons in the dispatcher's notices are made in Python: each reads in German too.
    app = _desk(
        tmp_path,
        db_url,
        clock,
        tickets={"language": "de"},
        limits={"acks_per_sender": 1},
        breaker={"per_sender": {"count": 3, "window_minutes": 60}},
    )
    try:
        for i in range(4):
            ingest(app, mail(sender="robot@customer.example", subject=f"Ticket {i} erhalten"), "smtp")
        with app.sessions() as session:
            notices = [r.body for r in session.scalars(select(Outbox).where(Outbox.kind == "dispatcher_new"))]
            (warning,) = [r.body for r in session.scalars(select(Outbox).where(Outbox.kind == "breaker_warning"))]
    finally:
        app.close()
    unacknowledged = " ".join(notices[-1].split())
    assert "keine Eingangsbestätigung erhalten: Obergrenze erreicht (1 in 60 Minuten)" in unacknowledged
    assert "rate limit reached" not in unacknowledged
    warning = " ".join(warning.split())
    assert "(Limit: 3 neue Tickets in 60 Minuten)" in warning and "new tickets in" not in warning


def test_a_german_dispatcher_reads_why_a_new_ticket_is_automatic_in_german(tmp_path: Path, db_url: str, clock) -> None:
    nagios = {"name": "nagios", "senders": ["nagios@monitor.example.com"]}
    subject = "** PROBLEM Service Alert: web01/HTTP is CRITICAL **"
    rows = _mail_to(
        tmp_path,
        db_url,
        clock,
        mail(sender="nagios@monitor.example.com", subject=subject),
        tickets={"language": "de"},
        alerts=[nagios],
    )
    notice = " ".join(rows["dispatcher_new"].body.split())
    assert "Automatische Mail (Alarmquelle nagios (PROBLEM)): Der Absender" in notice
    assert "alert source" not in notice
