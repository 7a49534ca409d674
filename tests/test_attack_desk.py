"""An attack on the dispatcher desk through ingest() with real mails: what a hostile outsider or
a sloppy insider sends must change nothing it may not, and never leave a mail retrying."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Status
from mailgate.sla import scans
from tests.conftest import make_settings
from tests.desk import MX, REQUESTER, command, desk, events, open_ticket, receipt, reply_address, rows, ticket
from tests.mails import mail
from tests.test_alerts import PROBLEM, RECOVERY, alert, tickets_of


@pytest.fixture
def app(tmp_path, db_url, clock):
    application = desk(tmp_path, db_url, clock)
    yield application
    application.close()


def test_a_recovery_the_trusted_mta_failed_does_not_resolve_the_incident(tmp_path, db_url, clock) -> None:
    source = {"name": "nagios", "senders": ["nagios@monitor.example.com"], "resolve_on_recovery": True}
    settings = make_settings(tmp_path, db_url, alerts=[source], acknowledgements={"trusted_authserv_ids": [MX]})
    app = App.build(settings, clock=clock)
    try:
        ingest(app, alert(PROBLEM), "smtp")
        forged = f"Authentication-Results: {MX}; dmarc=fail header.from=monitor.example.com\r\n".encode()
        ingest(app, forged + alert(RECOVERY), "smtp")
        (incident, *_) = tickets_of(app)
        assert incident.status != Status.RESOLVED
    finally:
        app.close()


def test_a_command_block_past_its_limit_is_refused_whole_and_its_note_reaches_no_requester(app: App) -> None:
    number = open_ticket(app)
    block = "".join(f"#cc add person{n}@example.com\n" for n in range(20))
    result = command(app, number, block + "#note\nThe requester's manager wants them gone: keep it quiet.\n")

    # The 21st line was the dispatcher's #note: sent as the answer, it told the requester.
    assert result.outcome == "refused"
    assert not any("keep it quiet" in r.body for r in rows(app, to=REQUESTER))
    assert events(app, number, "cc") == []
    assert "20" in receipt(app).body


# Our MTA's own Received, then its verdict (a milter inserts it below that Received), then what
# the forger wrote as the first lines of a mail sent straight to our MX: no Received between.
SPOOFED_BELOW = {
    "a second DMARC verdict": [
        f"{MX}; dmarc=none header.from=example.com",
        f"{MX}; dmarc=pass header.from=example.com",
    ],
    "a pass beside no signature": [f"{MX}; dkim=none; dmarc=none", f"{MX}; dkim=pass header.d=example.com"],
}


@pytest.mark.parametrize("results", SPOOFED_BELOW.values(), ids=SPOOFED_BELOW.keys())
def test_a_pass_contradicting_the_trusted_mtas_own_verdict_proves_nothing(app: App, results: list[str]) -> None:
    number = open_ticket(app)
    raw = mail(sender="dispatch@example.com", subject=f"Re: [HD #{number}] Printer", body="#assign alice\n")
    head = f"Received: from attacker.example (attacker.example [192.0.2.66]) by {MX}\r\n"
    head += "".join(f"Authentication-Results: {r}\r\n" for r in results)

    assert ingest(app, head.encode() + raw, "smtp").outcome == "refused"
    assert ticket(app, number).assignee is None


def test_the_close_notice_is_marked_automatic_so_no_vacation_responder_answers_it(app: App) -> None:
    number = open_ticket(app)
    command(app, number, "#close")

    (notice,) = rows(app, "closed", REQUESTER)
    # "no" is for a person's words the desk passes on; the notice is the desk's own, and a
    # responder's answer within the reopen window would open the ticket again.
    assert notice.headers["Auto-Submitted"] == "auto-generated"


FORWARD = (
    "Please help her.\n\n---------- Forwarded message ---------\nFrom: Erin Ray <erin@corp.example>\n"
    "Date: Mon, Nov 23, 2026 at 8:12 AM\nSubject: Plotter prints twice\nTo: <carol@example.com>\n\n"
    "The plotter prints twice.\n"
)


def test_the_forwarding_staff_watchers_reply_reaches_the_assignee(app: App) -> None:
    proven = f"Authentication-Results: {MX}; dmarc=pass header.from=example.com\r\n".encode()
    forward = mail(sender="carol@example.com", subject="Fwd: Plotter prints twice", body=FORWARD)
    number = ingest(app, proven + forward, "smtp").ticket_number
    command(app, number, "#assign alice")
    command(app, number, "We replaced the drum.", sender="alice@example.com")
    (copy,) = rows(app, "answer", "carol@example.com")  # the watcher has the answer, with her token

    raw = mail(
        sender="carol@example.com",
        to=reply_address(copy),
        subject=f"Re: [HD #{number}] Plotter prints twice",
        body="It still prints twice, I just checked with Erin.\n",
    )
    ingest(app, raw, "smtp")

    # Carol watches the ticket she opened for Erin, on another team: her word was kept from
    # everyone (only she was told it was not sent), as if she had answered for the desk.
    (relayed,) = rows(app, "requester_reply", "alice@example.com")
    assert "still prints twice" in relayed.body
    assert rows(app, "answer_kept") == []


@pytest.mark.parametrize("line", ["#cc add {}", "#requester {}"])
def test_an_address_too_long_to_store_is_a_wrong_line_not_a_quarantined_mail(app: App, line: str) -> None:
    number = open_ticket(app)
    address = "a" * 64 + "@" + "b" * 250 + ".example"  # 323 characters: people.address holds 320

    # PostgreSQL refused the value, and the dispatcher's command mail went to quarantine
    # with no word to them.
    assert command(app, number, line.format(address)).outcome == "refused"
    assert "nothing was changed" in " ".join(receipt(app).body.split()).lower()


def test_a_category_too_long_to_store_is_a_wrong_line_not_a_quarantined_mail(app: App) -> None:
    number = open_ticket(app)
    # No [sla] categories configured: any name goes, but tickets.category holds 100 characters.
    assert command(app, number, "#category " + "c" * 200).outcome == "refused"
    assert "nothing was changed" in " ".join(receipt(app).body.split()).lower()


ROBOTS = {
    "an alert": lambda: alert(PROBLEM, headers={"Auto-Submitted": "auto-generated"}),
    "a no-reply sender": lambda: mail(sender="noreply@shop.example", subject="Your order 123 is delayed"),
}


@pytest.mark.parametrize("robot", ROBOTS.values(), ids=ROBOTS.keys())
def test_the_relay_never_answers_a_robot_that_opened_the_ticket(tmp_path, db_url, clock, robot) -> None:
    app = desk(tmp_path, db_url, clock, alerts=[{"name": "nagios", "senders": ["nagios@monitor.example.com"]}])
    try:
        number = ingest(app, robot(), "smtp").ticket_number
        command(app, number, "#assign alice")
        command(app, number, "Restarted the web server, looks fine now.", sender="alice@example.com")
        command(app, number, "#close", sender="alice@example.com")

        # The answer and the close notice went to the monitoring system's (the shop's) mailbox,
        # whose robot may answer them in turn.
        sent = [r for r in rows(app) if r.kind in ("answer", "closed")]
        assert sent == []
    finally:
        app.close()


def test_the_sla_scans_do_not_mail_a_resolved_alerts_monitoring_system(tmp_path, db_url, clock) -> None:
    source = {"name": "nagios", "senders": ["nagios@monitor.example.com"], "resolve_on_recovery": True}
    app = desk(tmp_path, db_url, clock, alerts=[source])
    try:
        number = ingest(app, alert(PROBLEM), "smtp").ticket_number
        ingest(app, alert(RECOVERY), "smtp")
        clock.advance(timedelta(days=30))
        with app.sessions() as s:
            scans.run_all(s, app.settings, clock.now())
            s.commit()

        assert ticket(app, number).status == Status.CLOSED  # closed after sla.close_resolved_after_days
        # "Your ticket was closed; rate us with #rate 5" to Nagios, which may answer it.
        assert rows(app, to="nagios@monitor.example.com") == []
    finally:
        app.close()


def test_undo_does_not_take_back_what_someone_else_changed_since(app: App) -> None:
    number = open_ticket(app)
    command(app, number, "#priority high")
    command(app, number, "#priority urgent", sender="admin@example.com")

    assert command(app, number, "#undo").outcome == "reply"

    # The dispatcher's #undo set the priority back to normal: the admin's urgent was lost
    # without a word to either of them.
    assert ticket(app, number).priority == "urgent"


def test_undo_reverts_the_last_command_mail_not_a_later_answer(app: App) -> None:
    number = open_ticket(app)
    command(app, number, "#priority high")
    command(app, number, "We are on it and will call you.")  # an answer, relayed: no command

    assert command(app, number, "#undo").outcome == "reply"
    # The answer was taken for the last command mail: nothing was reverted, "undone" all the same.
    assert ticket(app, number).priority == "normal"
