"""Routing rules ([[routes]]): a new ticket's category, priority, team and assignee from its
recipient, sender, subject or body, in rule order; the dispatcher is told which rule did it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.config import ConfigError, load_settings
from mailgate.ingest.pipeline import ingest
from mailgate.models import Event, Status, Ticket
from tests.conftest import make_settings
from tests.mails import mail
from tests.test_ingest import outbox

STAFF = [
    {"address": "alice@example.com", "name": "Alice Jones", "team": "network"},
    {"address": "bob@example.com", "name": "Bob Brown", "teams": ["facilities"]},
    {"address": "dispatch@example.com", "name": "Dispatcher", "role": "dispatcher"},
]
ADDRESSES = {
    "support": "support@example.com",
    "dispatcher": "dispatch@example.com",
    "own": ["helpdesk@example.com", "printers@example.com"],
}


def desk(tmp_path: Path, db_url: str, clock: FixedClock, routes: list[dict], **overrides: object) -> App:
    values = {"staff": STAFF, "addresses": ADDRESSES, "routes": routes, **overrides}
    return App.build(make_settings(tmp_path, db_url, **values), clock=clock)


def routed(app: App, raw: bytes, **kwargs: object) -> Ticket:
    result = ingest(app, raw, "smtp", **kwargs)
    assert result.outcome == "new_ticket", result.trace
    with app.sessions() as s:
        ticket = s.scalar(select(Ticket).where(Ticket.number == result.ticket_number))
        _ = ticket.assignee  # loaded before the session ends
        return ticket


def events(app: App, number: int) -> list[Event]:
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        return list(s.scalars(select(Event).where(Event.ticket_id == t.id).order_by(Event.id)))


PRINTERS = {"name": "printers", "recipients": ["printers@example.com"], "team": "facilities"}


def test_mail_to_a_desk_address_in_the_envelope_gets_that_rules_team(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, [PRINTERS])
    # The MTA delivered it for printers@ (a Bcc, a list): only the envelope says so.
    t = routed(app, mail(to="support@example.com"), envelope_recipients=["printers@example.com"])
    assert t.team == "facilities"
    other = routed(app, mail(to="support@example.com"), envelope_recipients=["support@example.com"])
    assert other.team is None
    app.close()


@pytest.mark.parametrize("header", ["To", "Cc"])
def test_mail_naming_a_desk_address_in_to_or_cc_gets_that_rules_team(tmp_path, db_url, clock, header) -> None:
    app = desk(tmp_path, db_url, clock, [PRINTERS])
    raw = mail(to="Printers <Printers@Example.com>") if header == "To" else mail(headers={"Cc": "printers@example.com"})
    assert routed(app, raw).team == "facilities"
    app.close()


def test_sender_address_and_domain_with_its_subdomains(tmp_path, db_url, clock) -> None:
    rules = [
        {"name": "ceo", "senders": ["ceo@example.com"], "priority": "urgent"},
        {"name": "partner", "senders": ["@partner.example"], "category": "partner"},
    ]
    app = desk(tmp_path, db_url, clock, rules)
    assert routed(app, mail(sender="The CEO <CEO+desk@example.com>")).priority == "urgent"
    assert routed(app, mail(sender="pat@partner.example")).category == "partner"
    assert routed(app, mail(sender="pat@eu.partner.example")).category == "partner"  # a subdomain
    lookalike = routed(app, mail(sender="pat@notpartner.example"))
    assert (lookalike.category, lookalike.priority) == (None, "normal")
    app.close()


def test_subject_pattern_whatever_the_case(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, [{"name": "print", "subject": r"printer|toner", "category": "hardware"}])
    assert routed(app, mail(subject="TONER empty on 2nd floor")).category == "hardware"
    assert routed(app, mail(subject="VPN drops")).category is None
    app.close()


def test_body_pattern_is_searched_in_the_start_of_the_text_only(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, [{"name": "vpn", "body": r"\bvpn\b", "team": "network"}])
    assert routed(app, mail(subject="Cannot work", body="Hi,\nthe VPN drops every hour.\n")).team == "network"
    late = "filler line of text\n" * 1500 + "the VPN drops\n"  # 30,000 characters before it
    assert routed(app, mail(subject="Cannot work", body=late)).team is None
    app.close()


def test_a_pattern_that_backtracks_costs_a_bounded_time_and_matches_nothing(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, [{"name": "bad", "body": r"(x+x+)+y", "team": "network"}])
    started = time.monotonic()
    result = ingest(app, mail(body="x" * 5000 + "\n"), "smtp")
    assert time.monotonic() - started < 5
    assert any("ran out of time" in t["decision"] for t in result.trace)
    with app.sessions() as s:
        assert s.scalar(select(Ticket.team)) is None
    app.close()


def test_a_rule_that_assigns_opens_the_ticket_for_the_assignee_and_records_it(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, [{**PRINTERS, "assignee": "Bob Brown"}])
    t = routed(app, mail(to="printers@example.com"))
    assert t.assignee.address == "bob@example.com" and t.status == Status.OPEN
    by_rule = [e for e in events(app, t.number) if e.actor == "mailgate" and e.action != "created"]
    assert {(e.field, e.new) for e in by_rule} == {
        ("team", "facilities"),
        ("assignee", "bob@example.com"),
        ("status", "open"),
    }
    assert {e.evidence for e in by_rule} == {"route printers"}
    notice = outbox(app, "dispatcher_new")[0].body
    assert "Assigned to Bob Brown" in notice and "Unassigned" not in notice
    app.close()


def test_rules_in_order_each_sets_what_no_earlier_one_set_and_the_notice_names_them(tmp_path, db_url, clock) -> None:
    rules = [
        {"name": "ceo", "senders": ["ceo@example.com"], "priority": "urgent"},
        {**PRINTERS, "priority": "low", "category": "hardware"},
        {"name": "unmatched", "subject": "VPN", "category": "network"},
    ]
    app = desk(tmp_path, db_url, clock, rules)
    t = routed(app, mail(sender="ceo@example.com", to="printers@example.com"))
    assert (t.priority, t.team, t.category) == ("urgent", "facilities", "hardware")
    notice = " ".join(outbox(app, "dispatcher_new")[0].body.split())
    assert 'Routing rule "ceo" matched (sender ceo@example.com) and set priority urgent.' in notice
    printers = 'Routing rule "printers" matched (recipient printers@example.com) and set category hardware, team '
    printers += "facilities."
    assert printers in notice
    assert "priority low" not in notice and "unmatched" not in notice
    # A mail no rule matches stays for the dispatcher, as before.
    plain = routed(app, mail(sender="dana@example.com"))
    assert (plain.priority, plain.team, plain.category, plain.assignee) == ("normal", None, None, None)
    assert "Routing rule" not in outbox(app, "dispatcher_new")[1].body
    app.close()


def test_the_german_notice_names_the_rule(tmp_path, db_url, clock) -> None:
    staff = [*STAFF[:2], {**STAFF[2], "language": "de"}]
    app = desk(tmp_path, db_url, clock, [{**PRINTERS, "assignee": "bob"}], staff=staff)
    routed(app, mail(to="printers@example.com"))
    notice = " ".join(outbox(app, "dispatcher_new")[0].body.split())
    assert "Zugewiesen an Bob Brown" in notice
    assert "Die Verteilregel „printers“ traf zu (Empfänger printers@example.com) und setzte Team facilities" in notice
    assert "recipient" not in notice
    app.close()


def test_the_acknowledgement_promises_the_routed_prioritys_deadline(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, [{"name": "outage", "subject": "down", "priority": "urgent"}])
    t = routed(app, mail(subject="Mail server down"))
    assert t.first_response_due == clock.now().replace(hour=10)  # urgent: 1 business hour, not normal's 8
    ack = " ".join(outbox(app, "ack")[0].body.split())
    assert "Priority urgent: we will answer by Monday 23 November 10:00" in ack
    app.close()


def test_only_a_new_ticket_is_routed_not_a_reply(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, [{"name": "print", "subject": "toner", "category": "hardware"}])
    t = routed(app, mail(subject="Question"))
    reply = ingest(app, mail(subject=f"Re: [HD #{t.number}] toner too"), "smtp")
    assert (reply.outcome, reply.ticket_number) == ("reply", t.number)
    with app.sessions() as s:
        assert s.scalar(select(Ticket.category).where(Ticket.number == t.number)) is None
    app.close()


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mailgate.toml"
    staff = '[[staff]]\naddress = "alice@example.com"\nname = "Alice Jones"\nteam = "network"\n'
    path.write_text(f'[addresses]\nown = ["printers@example.com"]\n{staff}{text}')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ('name = "r"\nsubject = "(print"\nteam = "network"', ["routes.0.subject", "'(print'", "regular expression"]),
        ('name = "r"\nbody = "[a-"\nteam = "network"', ["routes.0.body", "regular expression"]),
        ('name = "r"\nsubject = "x"\npriority = "asap"', ["routes.0.priority", "'asap'", "'urgent'"]),
        ('name = "r"\nsubject = "x"\nassignee = "carol"', ["routes.0.assignee = 'carol'", "alice@example.com"]),
        ('name = "r"\nsubject = "x"\nteam = "netwrok"', ["routes.0.team = 'netwrok'", "network"]),
        (
            'name = "r"\nrecipients = ["sales@example.com"]\nteam = "network"',
            ["routes.0.recipients = 'sales@example.com'", "desk's addresses", "addresses.own"],
        ),
        ('name = "r"\nsenders = ["not an address"]\nteam = "network"', ["routes.0.senders", "domains"]),
        ('name = "r"\nsubject = "x"', ["routes.0", "sets nothing", "category, priority, team, assignee"]),
        ('name = "r"\nsubject = "x"\nteem = "network"', ["routes.0.teem", "did you mean routes.team"]),
    ],
)
def test_a_bad_rule_names_the_key_the_value_and_what_was_expected(tmp_path, rule: str, expected: list[str]) -> None:
    message = _config(tmp_path, f"[[routes]]\n{rule}\n")
    for part in expected:
        assert part in message, message
    assert "Traceback" not in message
