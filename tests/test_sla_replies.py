"""A reply to an SLA warning or escalation works like a reply to the dispatcher's notice: its
Reply-To carries a token issued to its recipient, so their command lines apply with a receipt
when they may give them, and are refused with the reason when they may not (someone outside
the staff list, as sla.escalation_address may be). Through ingest(), replying to the real mail."""

from __future__ import annotations

from datetime import timedelta

from mailgate.ingest.pipeline import ingest
from mailgate.models import Outbox, Status
from tests.desk import reply_address
from tests.desk import ticket as loaded
from tests.mails import mail
from tests.sla_desk import at, change, desk, mails, new_ticket, run_daemon_clock


def _answer(app, row: Outbox, body: str) -> str:
    """`row`'s recipient replies to it, commands on the first lines above the quote."""
    quoted = "".join(f"> {line}\n" for line in row.body.splitlines())
    raw = mail(
        sender=row.recipients[0],
        to=reply_address(row),
        subject=f"Re: {row.headers['Subject']}",
        body=f"{body}\n\nOn Mon, 30 Nov 2026, the help desk wrote:\n{quoted}",
    )
    return ingest(app, raw, "smtp").outcome


def _receipts(app, to: str) -> list[Outbox]:
    return [r for r in mails(app, "command_receipt") if r.recipients == [to]]


def _on_team(team: str):
    def change_team(s, t, now) -> None:
        t.team = team

    return change_team


def test_the_assignee_answers_the_warning_with_commands_and_gets_the_receipt(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url)
    number = new_ticket(app)  # Alice's; first answer due 13:00, warned at 12:00
    run_daemon_clock(app, at(30, 9), at(30, 12), step=timedelta(minutes=30))
    (warning,) = mails(app, "sla_warning")
    assert warning.recipients == ["alice@example.com"]
    assert _answer(app, warning, "#take\n#priority urgent") == "reply"
    ticket = loaded(app, number)
    assert (ticket.priority, ticket.assignee.address) == ("urgent", "alice@example.com")
    (receipt,) = _receipts(app, "alice@example.com")
    assert "urgent" in receipt.body and "reply token" in receipt.body
    assert mails(app, "requester_reply") == []  # commands, not an answer to relay
    app.close()


def test_the_dispatcher_takes_an_unassigned_ticket_from_its_warning(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url)
    number = new_ticket(app, assignee=None)
    run_daemon_clock(app, at(30, 9), at(30, 12), step=timedelta(minutes=30))
    (warning,) = mails(app, "sla_warning")
    assert warning.recipients == ["dispatch@example.com"]
    _answer(app, warning, "#take")
    assert loaded(app, number).assignee.address == "dispatch@example.com"
    assert _receipts(app, "dispatch@example.com")
    app.close()


def test_the_team_lead_assigns_from_the_escalation_and_outsiders_are_told_why_not(tmp_path, db_url) -> None:
    # Bob leads the network team: the breach goes to him; level 2 to Bob's manager, whom the
    # directory does not name: sla.escalation_address, someone not on the staff list.
    app = desk(tmp_path, db_url, teams={"network": {"lead": "bob@example.com"}})
    number = new_ticket(app)
    change(app, number, _on_team("network"))
    run_daemon_clock(app, at(30, 9), at(1, 9, 30))
    first, second = mails(app, "sla_escalation")
    assert (first.recipients, second.recipients) == (["bob@example.com"], ["it-lead@example.com"])

    assert _answer(app, second, "#assign bob") == "refused"
    assert loaded(app, number).assignee.address == "alice@example.com"
    (refusal,) = _receipts(app, "it-lead@example.com")
    assert "commands are for staff" in " ".join(refusal.body.split())
    assert mails(app, "requester_reply") == []  # the refused commands are not relayed to Alice

    assert _answer(app, first, "#assign bob") == "reply"
    ticket = loaded(app, number)
    assert (ticket.assignee.address, ticket.status) == ("bob@example.com", Status.OPEN)
    (receipt,) = _receipts(app, "bob@example.com")
    assert "bob@example.com" in receipt.body
    app.close()
