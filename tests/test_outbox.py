"""Outgoing mail: what a recipient's client reads, and delivery of the outbox to a real SMTP
relay on loopback and to the Maildir sink."""

from __future__ import annotations

import email
import sqlite3
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate import people
from mailgate.app import App
from mailgate.db import upgrade
from mailgate.ingest.pipeline import ingest
from mailgate.models import Event, Outbox, OutboxState, Ticket
from mailgate.outgoing.compose import Templates, render
from mailgate.outgoing.outbox import AutoSubmitted, FlushReport, OutgoingMail, deliver_due, queue
from mailgate.outgoing.sender import MaildirSink, SmtpRelay
from tests.conftest import make_settings
from tests.mails import mail
from tests.smtp_peers import free_port, relay, silent_relay


def _via_relay(app: App, session: Session, port: int, now: datetime, max_attempts: int) -> FlushReport:
    """One sender round through the relay on `port`, its connection closed afterwards."""
    settings = make_settings(
        app.settings.data_dir.parent,
        app.settings.database_url,
        outgoing={"relay_host": "127.0.0.1", "relay_port": port},
    )
    transport = SmtpRelay(settings.outgoing, timeout=5)
    try:
        return deliver_due(session, transport, now, max_attempts)
    finally:
        transport.close()


def _rows(app: App) -> list[Outbox]:
    with app.sessions() as s:
        return list(s.scalars(select(Outbox).order_by(Outbox.id)))


def _site(tmp_path: Path, files: dict[str, str]) -> Path:
    """A site template directory holding `files` (path under it -> text)."""
    site = tmp_path / "site-templates"
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text, encoding="utf-8")
    return site


def _queue_note(
    app: App, templates: Templates, name: str, subject: str, text: str, auto: AutoSubmitted, occasion: str = "note:1"
) -> Outbox:
    """Queue a mail from the site's `note` template on ticket 1, to `name`."""
    with app.sessions() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        to = people.person_for(session, app.settings, "jo@example.com", name, app.clock.now())
        note = OutgoingMail(
            "note",
            occasion,
            ticket,
            to,
            "note",
            {"subject": subject, "text": text},
            auto_submitted=auto,
            in_reply_to="first@client.example.org",
        )
        row = queue(session, app.settings, templates, app.secret, note, app.clock.now())
        assert row is not None
        session.commit()
        session.refresh(row)
        session.expunge(row)
    return row


NOTE = {"note/subject.txt": "{{ subject }}", "note/body.txt": "{{ text }}"}


@pytest.mark.parametrize(
    ("name", "subject", "text"),
    [
        ("Jo Miller", "Printer jams", "Hello Jo,\n" + "x" * 2000 + "\nbye\n"),
        ("Jürgen Müller, IT", "Grüße aus Köln – Drucker", "Grüße, Jürgen!\n" + "äöü€" * 500 + "\nЖдём ответа.\n"),
        ("Zoë", "Ça marche", "Grüße aus Köln,\nZoë\n"),  # short lines: no excuse for 8bit either
    ],
    ids=["ascii", "non-ascii", "non-ascii-short-lines"],
)
def test_a_recipient_reads_back_exactly_what_was_queued(app: App, tmp_path, name: str, subject: str, text: str) -> None:
    ingest(app, mail(message_id="<first@client.example.org>"), "smtp")
    row = _queue_note(app, Templates(_site(tmp_path, NOTE)), name, subject, text, AutoSubmitted.REPLIED)
    data = render(row)
    # Fit for any relay: 7-bit, CRLF, no line over SMTP's 998 octets, even for the 2,000-character line.
    assert data.isascii()
    assert all(len(line) < 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(data, policy=default)
    assert isinstance(parsed, EmailMessage)
    (sender,), (to,), (reply_to,) = parsed["From"].addresses, parsed["To"].addresses, parsed["Reply-To"].addresses
    assert (sender.display_name, sender.addr_spec) == ("IT Help Desk", "support@example.com")
    assert (to.display_name, to.addr_spec) == (name, "jo@example.com")
    assert reply_to.display_name == "IT Help Desk" and reply_to.addr_spec.startswith("support+")
    assert reply_to.addr_spec == email.utils.parseaddr(row.headers["Reply-To"])[1]
    assert parsed["Subject"] == f"[HD #1] {subject}"
    assert parsed["Message-ID"] == row.message_id
    assert parsed["In-Reply-To"] == "<first@client.example.org>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["X-Mailgate-Loop"] == app.settings.outgoing.loop_id
    assert parsed.get_content_type() == "text/plain" and parsed.get_content_charset() == "utf-8"
    assert parsed.get_content().replace("\r\n", "\n") == text


def test_a_line_break_in_a_header_makes_the_row_dead_and_the_mail_behind_it_goes_out(app: App, tmp_path) -> None:
    ingest(app, mail(), "smtp")
    templates = Templates(_site(tmp_path, NOTE))
    broken = _queue_note(app, templates, "Jo\r\nBcc: everyone@example.com", "x", "text\n", AutoSubmitted.REPLIED)
    ingest(app, mail(sender="Kim <kim@example.com>", subject="Second problem"), "smtp")  # its notice queues after
    out = tmp_path / "out"
    with app.sessions() as session:
        report = deliver_due(session, MaildirSink(out), app.clock.now(), max_attempts=5)
    assert (report.dead, report.sent) == (1, 4)
    assert {r.id: r.state for r in _rows(app)}[broken.id] == OutboxState.DEAD
    with app.sessions() as s:
        (event,) = s.scalars(select(Event).where(Event.action == "delivery_failed"))
        assert event.new.startswith("note: cannot be rendered")
    delivered = [email.message_from_bytes(f.read_bytes(), policy=default) for f in (out / "new").iterdir()]
    assert sorted(m["To"].addresses[0].addr_spec for m in delivered) == [
        "dana@example.com",
        "dispatch@example.com",
        "dispatch@example.com",
        "kim@example.com",
    ]


def test_the_acknowledgement_is_auto_replied_and_the_dispatcher_notice_auto_generated(app: App, tmp_path) -> None:
    """RFC 3834: the acknowledgement answers the requester's mail; the notice answers nothing."""
    ingest(app, mail(), "smtp")
    with app.sessions() as session:
        assert deliver_due(session, MaildirSink(tmp_path / "out"), app.clock.now(), 5).sent == 2
    delivered = [email.message_from_bytes(f.read_bytes(), policy=default) for f in (tmp_path / "out" / "new").iterdir()]
    seen = {m["To"].addresses[0].addr_spec: m["Auto-Submitted"] for m in delivered}
    assert seen == {"dana@example.com": "auto-replied", "dispatch@example.com": "auto-generated"}


def test_a_dispatcher_notice_coming_back_opens_no_ticket(app: App) -> None:
    """Auto-generated alone would open a ticket (unacknowledged); the notice is still known as ours."""
    ingest(app, mail(), "smtp")
    (notice,) = (r for r in _rows(app) if r.kind == "dispatcher_new")
    result = ingest(app, render(notice), "smtp")
    assert result.outcome == "auto" and result.ticket_number is None
    with app.sessions() as s:
        assert len(list(s.scalars(select(Ticket)))) == 1


def test_a_site_template_overrides_the_shipped_one(tmp_path, db_url: str, clock) -> None:
    site = _site(tmp_path, {"ack/subject.txt": "Got it: {{ ticket.subject }}"})
    app = App.build(make_settings(tmp_path, db_url, templates_path=site), clock=clock)  # config key templates_path
    ingest(app, mail(), "smtp")
    (ack,) = (r for r in _rows(app) if r.kind == "ack")
    assert ack.headers["Subject"] == "[HD #1] Got it: Printer on 3rd floor jams"
    assert "We received your request" in ack.body  # the body the site did not override is the shipped one
    app.close()


def test_an_edited_site_template_reads_anew_in_the_next_templates(tmp_path: Path) -> None:
    """Every SLA scan builds its Templates anew, and compiled templates are kept for the whole
    process: what the next mail says still follows the admin's edit of a site template."""
    site = _site(tmp_path, {"greeting/subject.txt": "Hello {{ name }}", "greeting/body.txt": "Dear {{ name }},"})
    assert Templates(site).render("greeting", {"name": "Dana"}) == ("Hello Dana", "Dear Dana,\n")
    (site / "greeting/subject.txt").write_text("Good morning {{ name }}", encoding="utf-8")
    assert Templates(site).render("greeting", {"name": "Dana"})[0] == "Good morning Dana"


def test_queued_mail_reaches_the_relay_once(app: App) -> None:
    ingest(app, mail(subject="Grüße: Drucker"), "smtp")
    with relay() as (handler, port), app.sessions() as session:
        report = _via_relay(app, session, port, app.clock.now(), max_attempts=5)
        again = _via_relay(app, session, port, app.clock.now(), max_attempts=5)
    assert (report.sent, again.sent) == (2, 0)
    assert sorted(e.rcpt_tos[0] for e in handler.received) == ["dana@example.com", "dispatch@example.com"]
    ack = next(e for e in handler.received if e.rcpt_tos == ["dana@example.com"])
    parsed = email.message_from_bytes(ack.content, policy=default)
    assert parsed["Subject"] == "[HD #1] Grüße: Drucker"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert handler.received[0].mail_from == "support@example.com"
    assert all(r.state == OutboxState.SENT for r in _rows(app))


def test_permanent_refusal_marks_the_row_dead_with_an_event(app: App) -> None:
    ingest(app, mail(), "smtp")
    with relay("550 5.1.1 no such user") as (_, port), app.sessions() as session:
        report = _via_relay(app, session, port, app.clock.now(), max_attempts=5)
    assert report.dead == 2
    rows = _rows(app)
    assert all(r.state == OutboxState.DEAD and "550" in r.last_error for r in rows)
    with app.sessions() as s:
        assert len(list(s.scalars(select(Event).where(Event.action == "delivery_failed")))) == 2


def test_relay_down_retries_with_back_off_then_delivers(app: App, clock) -> None:
    ingest(app, mail(), "smtp")
    port = free_port()  # nothing listens here yet
    with app.sessions() as session:
        report = _via_relay(app, session, port, clock.now(), max_attempts=5)
    assert report.retried == 2
    rows = _rows(app)
    assert all(r.state == OutboxState.QUEUED and r.attempts == 1 for r in rows)
    assert all(r.next_attempt_at == clock.now() + timedelta(minutes=1) for r in rows)
    with relay() as (handler, relay_port), app.sessions() as session:
        assert _via_relay(app, session, relay_port, clock.now(), 5).sent == 0  # not due yet
        clock.advance(timedelta(minutes=1))
        assert _via_relay(app, session, relay_port, clock.now(), 5).sent == 2
    assert len(handler.received) == 2


def test_a_relay_that_times_out_costs_the_round_one_timeout_not_one_per_mail(app: App, clock) -> None:
    for n in range(3):
        ingest(app, mail(message_id=f"<silent{n}@example.org>", sender=f"user{n}@example.com"), "smtp")
    with silent_relay() as (connections, port), app.sessions() as session:
        outgoing = {"relay_host": "127.0.0.1", "relay_port": port}
        settings = make_settings(app.settings.data_dir.parent, app.settings.database_url, outgoing=outgoing)
        transport = SmtpRelay(settings.outgoing, timeout=0.5)
        report = deliver_due(session, transport, clock.now(), max_attempts=5)
        transport.close()
        assert len(connections) == 1  # the other five mails were not tried against a dead relay
    assert report.retried == 6
    rows = _rows(app)
    assert all(r.state == OutboxState.QUEUED and r.attempts == 1 for r in rows)
    assert all(r.next_attempt_at == clock.now() + timedelta(minutes=1) for r in rows)
    assert all("timed out" in r.last_error for r in rows)


def test_too_many_attempts_mark_the_row_dead(app: App, clock) -> None:
    ingest(app, mail(), "smtp")
    port = free_port()
    with app.sessions() as session:
        for _ in range(3):
            _via_relay(app, session, port, clock.now(), max_attempts=3)
            clock.advance(timedelta(hours=6))
    assert all(r.state == OutboxState.DEAD and "gave up after 3 attempts" in r.last_error for r in _rows(app))


def test_maildir_sink_without_relay(app: App, tmp_path) -> None:
    ingest(app, mail(), "smtp")
    with app.sessions() as session:
        assert deliver_due(session, MaildirSink(tmp_path / "out"), app.clock.now(), 5).sent == 2
    assert len(list((tmp_path / "out" / "new").iterdir())) == 2


def test_acknowledgements_are_delivered_before_dispatcher_notices(app: App, tmp_path) -> None:
    from mailgate.outgoing.outbox import claim_due

    for i in range(3):
        ingest(app, mail(subject=f"problem {i}"), "smtp")
    with app.sessions() as session:
        kinds = [row.kind for row in claim_due(session, app.clock.now(), limit=10)]
    assert kinds == ["ack"] * 3 + ["dispatcher_new"] * 3


def test_a_claimed_row_is_not_taken_by_a_second_sender(app: App, clock) -> None:
    from mailgate.outgoing.outbox import CLAIM_SECONDS, claim_due

    ingest(app, mail(), "smtp")
    with app.sessions() as first, app.sessions() as second:
        assert len(claim_due(first, clock.now(), limit=10)) == 2
        assert claim_due(second, clock.now(), limit=10) == []
        clock.advance(timedelta(seconds=CLAIM_SECONDS + 1))  # the first sender died mid-delivery
        assert len(claim_due(second, clock.now(), limit=10)) == 2


def test_the_daemon_sends_a_burst_over_one_relay_connection_and_quits_when_done(tmp_path, db_url: str, clock) -> None:
    """A relay sees one connection for a burst of acknowledgements, not one per round, and no
    connection left open once the queue is empty (relays drop idle clients)."""
    from tests.daemon_harness import running_daemon, wait_for

    with relay() as (handler, port):
        settings = make_settings(
            tmp_path,
            db_url,
            smtp={"enabled": False},
            outgoing={"relay_host": "127.0.0.1", "relay_port": port},
        )
        app = App.build(settings, clock=clock)
        for i in range(60):  # 120 mails: more than one round of the sender
            ingest(app, mail(sender=f"User {i} <user{i}@example.com>", subject=f"problem {i}"), "smtp")
        with running_daemon(app):
            wait_for(lambda: len(handler.received) == 120)
            wait_for(lambda: handler.quits == 1)
        rows = _rows(app)
        app.close()
    assert handler.connections == 1
    assert [r.state for r in rows] == [OutboxState.SENT] * 120


def test_a_refused_mail_does_not_keep_the_database_locked_while_others_travel(tmp_path, clock) -> None:
    """The relay refuses the first mail for good; while it receives the next ones, another
    writer (ingest, an IMAP poller) can still write to SQLite."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'mailgate.db'}")
    upgrade(settings.database_url)
    app = App.build(settings, clock=clock)
    for i in range(3):
        ingest(app, mail(sender=f"User {i} <user{i}@example.com>", subject=f"problem {i}"), "smtp")

    class LockProbe:
        def __init__(self) -> None:
            self.replies: list[str] = []
            self.writable: list[bool] = []

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            if not self.replies:
                self.replies.append("550")
                return "550 5.1.1 no such user"
            other = sqlite3.connect(tmp_path / "mailgate.db", timeout=0.2, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                self.writable.append(True)
            except sqlite3.OperationalError:
                self.writable.append(False)
            finally:
                other.close()
            self.replies.append("250")
            return "250 OK"

    probe = LockProbe()
    port = free_port()
    controller = Controller(probe, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with app.sessions() as session:
            report = _via_relay(app, session, port, clock.now(), max_attempts=5)
    finally:
        controller.stop()
        app.close()
    assert (report.dead, report.sent) == (1, 5)
    assert probe.writable == [True] * 5


def test_an_acknowledgement_to_a_sender_without_a_name_greets_without_the_address(app: App) -> None:
    result = ingest(app, mail(sender="dana@example.com"), "smtp")
    with app.sessions() as session:
        ack = session.scalars(select(Outbox).where(Outbox.kind == "ack", Outbox.ticket_id.is_not(None))).one()
    assert result.outcome == "new_ticket"
    assert ack.body.startswith("Hello,\n\nWe received your request")


def test_bidi_overrides_of_a_request_do_not_reach_the_acknowledgements_subject(app: App) -> None:
    ingest(app, mail(subject="invoice \u202etxt.exe"), "smtp")
    with app.sessions() as session:
        subjects = [row.headers["Subject"] for row in session.scalars(select(Outbox))]
    assert subjects and all("\u202e" not in s for s in subjects)
