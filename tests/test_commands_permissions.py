"""Who may do what by mail: dispatchers and admins everything; agents on tickets of their teams
or assigned to them; requesters #close and #reopen of their own tickets; anyone else nothing.
#help lists what this sender may do."""

from __future__ import annotations

import pytest

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Status
from tests.desk import REQUESTER, command, desk, open_ticket, receipt, rows, ticket
from tests.mails import mail


@pytest.fixture
def app(tmp_path, db_url, clock):
    application = desk(tmp_path, db_url, clock)
    yield application
    application.close()


def _network_ticket(app: App, assignee: str | None = None) -> int:
    """A ticket of team network (alice's and bob's), maybe assigned."""
    number = open_ticket(app)
    command(app, number, "#team network" + (f"\n#assign {assignee}" if assignee else ""))
    return number


# (sender, assigned to, command, allowed)
CELLS = [
    ("dispatch@example.com", None, "#category hardware", True),
    ("admin@example.com", None, "#category hardware", True),
    ("admin@example.com", None, "#team printers", True),
    ("alice@example.com", None, "#priority high", True),  # agent, ticket of her team
    ("alice@example.com", None, "#status pending", True),
    ("alice@example.com", None, "#take", True),
    ("alice@example.com", None, "#cc add frank@example.org", True),
    ("alice@example.com", None, "#assign bob", True),  # within her team
    ("alice@example.com", None, "#assign carol", False),  # outside it
    ("alice@example.com", None, "#category hardware", False),  # the dispatcher's
    ("alice@example.com", None, "#merge 2", False),
    ("carol@example.com", "carol", "#status pending", True),  # agent, assigned to her
    ("carol@example.com", None, "#priority high", False),  # agent, another team's ticket
    ("carol@example.com", None, "#take", False),
]


@pytest.mark.parametrize(("sender", "assignee", "text", "allowed"), CELLS)
def test_staff_permissions(app: App, sender: str, assignee: str | None, text: str, allowed: bool) -> None:
    number = _network_ticket(app, assignee)
    open_ticket(app, subject="another")
    before = ticket(app, number)

    result = command(app, number, text, sender=sender)

    after = ticket(app, number)
    changed = (after.priority, after.status, after.category, after.team, after.assignee_id) != (
        before.priority,
        before.status,
        before.category,
        before.team,
        before.assignee_id,
    )
    if allowed:
        assert result.outcome == "reply", result.trace
        assert "were applied" in receipt(app, sender).body
    else:
        assert result.outcome == "refused"
        assert not changed
        assert "not allowed" in receipt(app, sender).body


@pytest.mark.parametrize(
    ("rule", "text", "allowed"),
    [("anyone", "#assign carol", True), ("no", "#assign bob", False), ("no", "#take", True)],
)
def test_agents_may_reassign_is_configurable(tmp_path, db_url, clock, rule: str, text: str, allowed: bool) -> None:
    app = desk(tmp_path, db_url, clock, commands={"agents_may_reassign": rule})
    try:
        number = _network_ticket(app)
        result = command(app, number, text, sender="alice@example.com")
        assert result.outcome == ("reply" if allowed else "refused")
    finally:
        app.close()


def test_the_requester_may_close_and_reopen_their_own_ticket(app: App) -> None:
    number = open_ticket(app)
    assert command(app, number, "#close\nIt works now, thanks!", sender=REQUESTER, proof="token").outcome == "reply"
    assert ticket(app, number).status == Status.CLOSED
    assert "#undo" not in receipt(app, REQUESTER).body  # that is for staff
    assert command(app, number, "#reopen\nIt broke again.", sender=REQUESTER, proof="token").outcome == "reply"
    assert ticket(app, number).status == Status.OPEN


def test_the_requester_may_not_set_the_priority(app: App) -> None:
    number = open_ticket(app)
    result = command(app, number, "#priority urgent", sender=REQUESTER, proof="token")
    assert result.outcome == "refused"
    assert ticket(app, number).priority == "normal"
    assert "you may use #close and #reopen" in receipt(app, REQUESTER).body


def test_a_requester_on_another_ticket_or_a_stranger_changes_nothing(app: App) -> None:
    open_ticket(app)  # dana's own
    erins = ingest(app, mail(sender="erin@example.com", subject="VPN"), "smtp").ticket_number
    for sender in (REQUESTER, "stranger@elsewhere.example"):
        result = command(app, erins, "#close", sender=sender)  # proven by the trusted MTA
        assert result.outcome == "new_ticket"  # their mail is a request of theirs, linked
        assert ticket(app, erins).status == Status.NEW
        assert not rows(app, "command_receipt", sender)


def test_help_lists_what_this_sender_may_do(app: App) -> None:
    number = _network_ticket(app)
    command(app, number, "#help", sender="dispatch@example.com")
    command(app, number, "#help", sender="alice@example.com")
    command(app, number, "#help", sender=REQUESTER, proof="token")

    dispatcher = receipt(app, "dispatch@example.com", "command_digest").body
    agent = receipt(app, "alice@example.com", "command_digest").body
    requester = receipt(app, REQUESTER, "command_digest").body
    assert "#merge" in dispatcher and "#category" in dispatcher
    assert "#priority" in agent and "#merge" not in agent and "#category" not in agent
    assert "#close" in requester and "#reopen" in requester and "#priority" not in requester
