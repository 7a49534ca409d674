"""Questions in a new mail to the desk: a proven staff member's fresh "#mine", "#queue team",
"#show N" or "#help" is answered by the digest alone (no ticket, no acknowledgement, no notice
to the dispatcher); an unproven one is told how to send commands; anything else stays a new
ticket."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mailgate.app import App
from mailgate.ingest.pipeline import IngestResult, ingest
from mailgate.models import Message, Ticket
from tests.desk import MX, REQUESTER, command, desk, open_ticket, receipt, rows
from tests.mails import mail


@pytest.fixture
def app(tmp_path, db_url, clock):
    application = desk(tmp_path, db_url, clock)
    yield application
    application.close()


def fresh(app: App, body: str, sender: str, *, proven: bool = True) -> IngestResult:
    """A new mail to the desk naming no ticket; proven: the trusted MTA's DMARC pass for it."""
    above = f"Authentication-Results: {MX}; dmarc=pass header.from={sender.split('@')[1]}\r\n" if proven else ""
    raw = mail(sender=sender, subject="", body=body)
    return ingest(app, above.encode() + raw, "smtp")


def _tickets(app: App) -> int:
    with app.sessions() as s:
        return s.scalar(select(func.count(Ticket.id))) or 0


def _desk_with_tickets(app: App) -> dict[str, int]:
    numbers = {subject: open_ticket(app, subject=subject) for subject in ("VPN down", "Wifi slow", "Toner empty")}
    command(app, numbers["VPN down"], "#assign alice\n#team network")
    command(app, numbers["Wifi slow"], "#team network")
    command(app, numbers["Toner empty"], "#team printers")
    return numbers


def _only_the_digest(app: App, result: IngestResult, to: str, tickets_before: int, notices_before: int) -> str:
    """The digest to `to` and nothing else: no ticket, no acknowledgement, no dispatcher notice;
    the mail itself is kept, on no ticket."""
    assert result.ticket_number is None, result.trace
    assert _tickets(app) == tickets_before
    assert not rows(app, "ack", to)
    assert len(rows(app, "dispatcher_new")) == notices_before
    digest = receipt(app, to, "command_digest")
    assert digest.ticket_id is None
    assert digest.headers["Auto-Submitted"] == "auto-replied"
    with app.sessions() as s:
        kept = s.scalar(select(Message).where(Message.message_id == digest.headers["In-Reply-To"].strip("<>")))
        assert kept is not None and kept.ticket_id is None
    return digest.body


def test_a_proven_agents_fresh_mine_gets_the_digest_of_their_tickets_and_opens_nothing(app: App) -> None:
    _desk_with_tickets(app)
    before, notices = _tickets(app), len(rows(app, "dispatcher_new"))

    result = fresh(app, "#mine\n", "alice@example.com")

    body = _only_the_digest(app, result, "alice@example.com", before, notices)
    assert "assigned to you" in body
    assert "VPN down" in body and "Wifi slow" not in body and "Toner" not in body


def test_the_proven_dispatchers_fresh_queue_of_a_team(app: App) -> None:
    _desk_with_tickets(app)
    before, notices = _tickets(app), len(rows(app, "dispatcher_new"))

    result = fresh(app, "#queue printers\n", "dispatch@example.com")

    assert result.outcome != "auto", result.trace  # our own address, yet a person's question
    body = _only_the_digest(app, result, "dispatch@example.com", before, notices)
    assert "team printers" in body and "Toner empty" in body and "VPN" not in body


def test_a_fresh_show_describes_the_ticket(app: App) -> None:
    numbers = _desk_with_tickets(app)
    number = numbers["Wifi slow"]
    before, notices = _tickets(app), len(rows(app, "dispatcher_new"))

    result = fresh(app, f"#show {number}\n", "bob@example.com")  # bob works on team network

    body = _only_the_digest(app, result, "bob@example.com", before, notices)
    assert f"HD #{number}: Wifi slow" in body
    assert f"requester {REQUESTER}" in body


def test_a_fresh_help_lists_what_the_sender_may_do_in_general(app: App) -> None:
    before = _tickets(app)
    fresh(app, "#help\n", "alice@example.com")
    fresh(app, "#help\n", "dispatch@example.com")

    assert _tickets(app) == before
    agent = receipt(app, "alice@example.com", "command_digest").body
    dispatcher = receipt(app, "dispatch@example.com", "command_digest").body
    assert "#take" in agent and "#close" in agent and "#mine" in agent and "#merge" not in agent
    assert "#merge" in dispatcher and "#requester" in dispatcher
    assert "new mail" in agent  # where the questions work, where the changes do


@pytest.mark.parametrize("sender", ["alice@example.com", "dispatch@example.com"])
def test_an_unproven_fresh_mine_gets_no_digest_but_the_explanation(app: App, sender: str) -> None:
    _desk_with_tickets(app)
    before = _tickets(app)

    result = fresh(app, "#mine\n", sender, proven=False)

    assert result.outcome == "refused"
    assert _tickets(app) == before
    assert not rows(app, "command_digest", sender)  # it lists tickets: not to whoever wrote the From
    assert not rows(app, "ack", sender)
    explanation = receipt(app, sender, "command_unproven")
    assert explanation.ticket_id is None
    assert "nothing shows that you sent" in " ".join(explanation.body.split())
    assert "VPN" not in explanation.body


def test_a_fresh_mail_of_change_commands_stays_a_new_ticket(app: App) -> None:
    result = fresh(app, "#assign alice\n", "bob@example.com")
    assert result.outcome == "new_ticket"
    assert rows(app, "ack", "bob@example.com")
    assert not rows(app, "command_digest") and not rows(app, "command_receipt")


def test_a_fresh_question_with_text_below_stays_a_new_ticket(app: App) -> None:
    result = fresh(app, "#help\n\nMy laptop does not start since this morning.\n", "alice@example.com")
    assert result.outcome == "new_ticket"
    assert not rows(app, "command_digest")


def test_a_requesters_fresh_mine_is_an_ordinary_new_ticket(app: App) -> None:
    result = fresh(app, "#mine\n", REQUESTER)
    assert result.outcome == "new_ticket"
    assert rows(app, "ack", REQUESTER)
    assert not rows(app, "command_digest") and not rows(app, "command_unproven")


def test_a_fresh_question_with_a_wrong_line_answers_nothing_and_says_why(app: App) -> None:
    _desk_with_tickets(app)
    before = _tickets(app)

    result = fresh(app, "#queue network\n#show 999\n", "carol@example.com")  # carol is team printers

    assert result.outcome == "refused"
    assert _tickets(app) == before
    assert not rows(app, "command_digest")
    refused = receipt(app, "carol@example.com")
    assert refused.ticket_id is None
    assert "the queue of team network is not yours" in refused.body
    assert "there is no ticket #999" in refused.body


def test_the_answers_without_a_ticket_are_in_the_staff_members_language(tmp_path, db_url, clock) -> None:
    from tests.desk import STAFF

    staff = [{**m, "language": "de"} if m.get("role") == "dispatcher" else m for m in STAFF]
    app = desk(tmp_path, db_url, clock, staff=staff)
    try:
        fresh(app, "#help\n", "dispatch@example.com")
        fresh(app, "#show 999\n", "dispatch@example.com")
        fresh(app, "#mine\n", "dispatch@example.com", proven=False)
        assert "per Mail" in receipt(app, kind="command_digest").body
        assert receipt(app).headers["Subject"] == "Ihre Fragen wurden nicht beantwortet"
        assert "neue Mail mit Befehlen" in receipt(app, kind="command_unproven").body
        assert _tickets(app) == 0
    finally:
        app.close()


def test_a_german_agents_digest_names_its_lists_in_german(tmp_path, db_url, clock) -> None:
    from tests.desk import STAFF

    staff = [{**m, "language": "de"} if m["address"] == "alice@example.com" else m for m in STAFF]
    app = desk(tmp_path, db_url, clock, staff=staff)
    try:
        _desk_with_tickets(app)
        fresh(app, "#mine\n", "alice@example.com")
        body = receipt(app, "alice@example.com", "command_digest").body
        assert "Offene Tickets, Ihnen zugewiesen:" in body and "assigned to you" not in body
    finally:
        app.close()
