"""Who may open a ticket by mail: [intake] unknown_senders = "accept" | "domains" | "refuse"
(issue 12, item 1). A refused mail is kept on no ticket, and its sender told why, as often as
an acknowledgement would be allowed; known senders and replies to one's tickets always pass."""

from __future__ import annotations

import email
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.config import load_settings
from mailgate.config_file import ConfigError
from mailgate.ingest.pipeline import ingest
from mailgate.models import Event, Message, Ticket
from mailgate.outgoing.outbox import deliver_due
from mailgate.outgoing.sender import MaildirSink
from tests.conftest import make_settings
from tests.mails import mail
from tests.test_ingest import outbox
from tests.test_threading_rules import says

MX = "mx.example.com"


def desk(tmp_path: Path, db_url: str, clock, **intake: object) -> App:
    settings = make_settings(
        tmp_path,
        db_url,
        intake=intake,
        acknowledgements={"trusted_authserv_ids": [MX]},
        requesters=[{"address": "erin@partner.example", "name": "Erin Lee"}],
    )
    return App.build(settings, clock=clock)


@pytest.fixture
def refusing(tmp_path, db_url, clock):
    app = desk(tmp_path, db_url, clock, unknown_senders="refuse")
    yield app
    app.close()


@pytest.fixture
def by_domain(tmp_path, db_url, clock):
    app = desk(tmp_path, db_url, clock, unknown_senders="domains", domains=["corp.example"])
    yield app
    app.close()


def tickets(app: App) -> int:
    with app.sessions() as s:
        return len(list(s.scalars(select(Ticket.id))))


def refused_messages(app: App) -> list[Message]:
    with app.sessions() as s:
        return list(s.scalars(select(Message).where(Message.kind == "refused", Message.ticket_id.is_(None))))


def test_accept_lets_anyone_open_a_ticket(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, unknown_senders="accept")
    try:
        assert ingest(app, mail(sender="stranger@elsewhere.example"), "smtp").outcome == "new_ticket"
        assert [r.recipients for r in outbox(app, "ack")] == [["stranger@elsewhere.example"]]
    finally:
        app.close()


def test_refuse_keeps_an_unknown_senders_mail_on_no_ticket_and_tells_them_why(refusing: App) -> None:
    raw = mail(sender="Sam Stranger <sam@elsewhere.example>", subject="Quote for toner", body="Best prices!\n")
    result = ingest(refusing, raw, "smtp")
    assert result.outcome == "refused"
    assert result.ticket_number is None and tickets(refusing) == 0
    (kept,) = refused_messages(refusing)
    assert kept.raw.endswith(raw[-40:]) and kept.from_addr == "sam@elsewhere.example"  # nothing lost
    (reply,) = outbox(refusing)  # the dispatcher is not told of each refusal
    assert reply.kind == "refused" and reply.recipients == ["sam@elsewhere.example"]
    assert reply.ticket_id is None
    assert "Quote for toner" in reply.headers["Subject"] and "[HD #" not in reply.headers["Subject"]
    assert reply.headers["Auto-Submitted"] == "auto-replied"
    assert "no ticket was opened" in reply.body
    assert "forward your mail to the help desk" in reply.body  # whom to ask
    with refusing.sessions() as s:
        (event,) = s.scalars(select(Event).where(Event.action == "refused"))
        assert event.message_id == kept.id and event.new == "intake.unknown_senders = refuse"


def test_the_refusal_is_delivered_as_an_answer_to_the_refused_mail(refusing: App, tmp_path: Path) -> None:
    ingest(refusing, mail(sender="sam@elsewhere.example", message_id="<q-1@elsewhere.example>"), "smtp")
    with refusing.sessions() as session:
        assert deliver_due(session, MaildirSink(tmp_path / "out"), refusing.clock.now(), 5).sent == 1
    (path,) = (tmp_path / "out" / "new").iterdir()
    sent = email.message_from_bytes(path.read_bytes(), policy=default)
    assert sent["To"].addresses[0].addr_spec == "sam@elsewhere.example"
    assert sent["In-Reply-To"] == "<q-1@elsewhere.example>" and sent["Auto-Submitted"] == "auto-replied"
    assert "help desk takes new requests only from people it knows" in sent.get_content()


def test_the_refusal_is_in_the_senders_language(refusing: App) -> None:
    raw = b"Content-Language: de-DE\r\n" + mail(sender="kai@elsewhere.example", subject="Drucker")
    ingest(refusing, raw, "smtp")
    (reply,) = outbox(refusing, "refused")
    assert "es wurde aber kein Ticket dafür angelegt" in reply.body


def test_refusals_are_rate_limited_per_mailbox_like_acknowledgements(refusing: App) -> None:
    # acks_per_sender = 3 (tests/conftest.py); victim+N is one mailbox.
    for n in range(5):
        result = ingest(refusing, mail(sender=f"robot+{n}@elsewhere.example", subject=f"Alert {n}"), "smtp")
        assert result.outcome == "refused"
    assert len(outbox(refusing, "refused")) == 3
    assert says(result, "no reply: rate limit reached")
    assert len(refused_messages(refusing)) == 5


def test_automatic_or_spam_mail_of_an_unknown_sender_is_refused_without_a_reply(refusing: App) -> None:
    automatic = mail(sender="monitor@elsewhere.example", headers={"Auto-Submitted": "auto-generated"})
    spam = mail(sender="offers@elsewhere.example", headers={"X-MS-Exchange-Organization-SCL": "9"})
    failed = f"Authentication-Results: {MX}; dmarc=fail header.from=elsewhere.example\r\n".encode() + mail(
        sender="forged@elsewhere.example"
    )
    for raw in (automatic, spam, failed):
        assert ingest(refusing, raw, "smtp").outcome == "refused"
    assert outbox(refusing) == []


@pytest.mark.parametrize(
    ("sender", "why"),
    [
        ("alice@example.com", "is staff"),
        ("erin@partner.example", "is in the requesters' directory"),
    ],
)
def test_refuse_admits_known_senders(refusing: App, sender: str, why: str) -> None:
    result = ingest(refusing, mail(sender=sender), "smtp")
    assert result.outcome == "new_ticket"
    assert says(result, sender, why, "admitted")


def test_refuse_admits_whoever_already_takes_part_in_a_ticket(refusing: App) -> None:
    # Erin (known) copies Frank on her request: Frank may open tickets of his own from then on.
    ingest(refusing, mail(sender="erin@partner.example", to="support@example.com, frank@partner.example"), "smtp")
    result = ingest(refusing, mail(sender="frank@partner.example", subject="My own problem"), "smtp")
    assert result.outcome == "new_ticket"
    assert says(result, "takes part in a ticket")


def test_a_participants_reply_to_their_ticket_is_never_refused(tmp_path, db_url, clock) -> None:
    accepting = desk(tmp_path, db_url, clock)
    try:
        number = ingest(accepting, mail(sender="sam@elsewhere.example"), "smtp").ticket_number
    finally:
        accepting.close()
    refusing = desk(tmp_path, db_url, clock, unknown_senders="refuse")  # the policy tightened later
    try:
        reply = mail(sender="sam@elsewhere.example", subject=f"Re: [HD #{number}] Printer")
        result = ingest(refusing, reply, "smtp")
        assert result.outcome == "reply" and result.ticket_number == number
    finally:
        refusing.close()


def test_a_proven_staff_members_forward_of_an_unknown_senders_mail_is_admitted(refusing: App) -> None:
    body = (
        "Please help her.\n\n---------- Forwarded message ---------\n"
        "From: Sam Stranger <sam@elsewhere.example>\nDate: Mon, Nov 23, 2026\nSubject: Invoice\n"
        "To: <alice@example.com>\n\n\nWhere is my invoice?\n"
    )
    proven = f"Authentication-Results: {MX}; dmarc=pass header.from=example.com\r\n".encode()
    result = ingest(refusing, proven + mail(sender="alice@example.com", subject="Fwd: Invoice", body=body), "smtp")
    assert result.outcome == "new_ticket"
    assert [r.recipients for r in outbox(refusing, "ack")] == [["sam@elsewhere.example"]]


@pytest.mark.parametrize(
    ("sender", "outcome"),
    [
        ("dana@corp.example", "new_ticket"),
        ("dana@berlin.corp.example", "new_ticket"),  # a subdomain counts as its domain
        ("dana@CORP.example", "new_ticket"),
        ("dana@evilcorp.example", "refused"),  # not a subdomain, just the same ending
        ("dana@corp.example.attacker.example", "refused"),
        ("erin@partner.example", "new_ticket"),  # known: in the directory
    ],
)
def test_domains_admits_the_listed_domains_and_their_subdomains(by_domain: App, sender: str, outcome: str) -> None:
    assert ingest(by_domain, mail(sender=sender), "smtp").outcome == outcome


def test_the_domains_refusal_names_the_domains(by_domain: App) -> None:
    ingest(by_domain, mail(sender="sam@elsewhere.example"), "smtp")
    (reply,) = outbox(by_domain, "refused")
    assert "only from addresses of corp.example" in reply.body


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[intake]\nunknown_senders = "sometimes"\n', "intake.unknown_senders = 'sometimes': Input should be 'accept'"),
        ('[intake]\nunknown_senders = "domains"\n', "intake.domains = []: expected at least one domain"),
        ('[intake]\ndomains = ["not a domain"]\n', "intake.domains = ['not a domain']: expected domain names"),
    ],
)
def test_config_errors_name_key_value_and_what_was_expected(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert expected in str(raised.value)
