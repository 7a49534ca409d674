"""A From header proves nothing: command mail not authenticated as its sender changes nothing,
is recorded with the verdict, and the staff member's own address is told how to send commands."""

from __future__ import annotations

import pytest

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Status
from tests.desk import MX, command, desk, events, open_ticket, receipt, reply_address, rows, ticket
from tests.mails import mail


@pytest.fixture
def app(tmp_path, db_url, clock):
    application = desk(tmp_path, db_url, clock)
    yield application
    application.close()


def _unchanged(app: App, number: int) -> None:
    t = ticket(app, number)
    assert (t.assignee, t.priority, t.status) == (None, "normal", Status.NEW)


def _explained(app: App, to: str = "dispatch@example.com") -> None:
    row = receipt(app, to, "command_unproven")
    assert row.recipients == [to]
    assert "nothing shows that you sent" in " ".join(row.body.split())
    assert "reply to a mail" in row.body


FORGERIES = {
    "no token, no Authentication-Results": [],
    "dkim=fail": [f"{MX}; dkim=fail header.d=example.com"],
    "an untrusted authserv-id": ["mx.attacker.example; dmarc=pass header.from=example.com"],
    "dkim=pass for another domain": [f"{MX}; dkim=pass header.d=attacker.example"],
}


@pytest.mark.parametrize("results", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_forged_command_mail_changes_nothing_and_the_staff_member_is_told(app: App, results: list[str]) -> None:
    number = open_ticket(app)
    result = command(app, number, "#assign alice\n#priority high", proof="none", authentication_results=results)

    assert result.outcome == "refused"
    _unchanged(app, number)
    _explained(app)
    (refused,) = events(app, number, "commands_refused")
    assert "not authenticated as dispatch@example.com" in refused.new
    assert not rows(app, "command_receipt")


def test_a_pass_the_sender_wrote_below_the_trusted_header_proves_nothing(app: App) -> None:
    number = open_ticket(app)
    raw = mail(sender="dispatch@example.com", subject=f"Re: [HD #{number}]", body="#assign alice\n")
    forged = (
        f"Authentication-Results: {MX}; dmarc=none\r\n"
        "Received: from outside.example (outside.example [192.0.2.1]) by mx.example.com\r\n"
        f"Authentication-Results: {MX}; dmarc=pass header.from=example.com\r\n"
    ).encode()
    assert ingest(app, forged + raw, "smtp").outcome == "refused"
    _unchanged(app, number)
    _explained(app)


def test_a_token_issued_to_alice_proves_nothing_from_bobs_address(app: App) -> None:
    number = open_ticket(app)
    command(app, number, "#help", sender="alice@example.com")  # the desk answers alice: her token
    alices = reply_address(receipt(app, "alice@example.com", "command_digest"))
    raw = mail(sender="bob@example.com", to=alices, subject=f"Re: [HD #{number}]", body="#assign bob\n")

    assert ingest(app, raw, "smtp").outcome == "refused"
    _unchanged(app, number)
    _explained(app, "bob@example.com")


def test_the_explanation_goes_to_the_directory_address_never_to_reply_to(app: App) -> None:
    number = open_ticket(app)
    raw = mail(
        sender="Dispatcher <dispatch@example.com>",
        subject=f"Re: [HD #{number}]",
        body="#assign alice\n",
        headers={"Reply-To": "attacker@evil.example"},
    )
    assert ingest(app, raw, "smtp").outcome == "refused"
    assert [r.recipients for r in rows(app, "command_unproven")] == [["dispatch@example.com"]]


def test_explanations_are_rate_limited_like_acknowledgements(app: App) -> None:
    number = open_ticket(app)
    for _ in range(5):
        assert command(app, number, "#priority high", proof="none").outcome == "refused"
    assert len(rows(app, "command_unproven")) == 3  # limits.acks_per_sender in the test settings
    assert len(events(app, number, "commands_refused")) == 5  # each one is on the record
    _unchanged(app, number)


def test_the_same_mail_with_a_trusted_pass_is_applied(app: App) -> None:
    number = open_ticket(app)
    result = command(app, number, "#assign alice\n#priority high", proof="dmarc")
    assert result.outcome == "reply"
    assert ticket(app, number).assignee.address == "alice@example.com"


def test_an_unproven_requester_close_changes_nothing_and_the_requester_is_told(app: App) -> None:
    from tests.desk import REQUESTER

    number = open_ticket(app)
    assert command(app, number, "#close", sender=REQUESTER, proof="none").outcome == "refused"
    assert ticket(app, number).status == Status.NEW
    _explained(app, REQUESTER)


def test_a_forgery_from_an_alias_is_explained_at_the_staff_members_address(tmp_path, db_url, clock) -> None:
    from tests.desk import STAFF

    alias = "a.jones@corp.example.net"
    staff = [{**m, "aliases": [alias]} if m["address"] == "alice@example.com" else m for m in STAFF]
    app = desk(tmp_path, db_url, clock, staff=staff)
    try:
        number = open_ticket(app)
        assert command(app, number, "#priority high", sender=alias, proof="none").outcome == "refused"
        _explained(app, "alice@example.com")
        # Proven by its own domain, the alias is alice, and her command is applied.
        command(app, number, "#help", sender=alias)
        assert receipt(app, "alice@example.com", "command_digest")
    finally:
        app.close()
