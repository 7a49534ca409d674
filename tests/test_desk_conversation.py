"""The dispatcher desk end to end, over SMTP: every mail enters through the daemon's listener
from a real SMTP client, and every mail mailgate sends leaves through its outbox to a capturing
relay on 127.0.0.1, where the test reads it as the recipient's mail client would: it answers
the Reply-To, quotes the mail below its answer, and sets In-Reply-To/References.

An employee writes; a forger's `#assign` in the dispatcher's name changes nothing; the dispatcher
assigns by replying to the notice; alice gets the thread and answers; the employee gets the
answer and replies with the quote below; alice gets the reply without the quote and closes the
ticket; the employee is told. The audit trail shows each step with who, when and which evidence.
"""

from __future__ import annotations

import email
import email.utils
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.models import Event, Outbox, Status, Ticket
from tests.conftest import make_settings
from tests.daemon_harness import running_daemon, wait_for
from tests.mails import mail
from tests.smtp_peers import CapturingRelay, relay

EMPLOYEE = "emma@example.com"
DISPATCHER = "dispatch@example.com"
ALICE = "alice@example.com"
SCREENSHOT = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


class Desk:
    """The daemon under test, the relay its mail leaves by, and what each recipient got."""

    def __init__(self, app: App, smtp_port: int, captured: CapturingRelay) -> None:
        self.app, self.port, self.captured = app, smtp_port, captured

    def send(self, sender: str, raw: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.sendmail(sender, ["support@example.com"], raw)

    def inbox(self, address: str) -> list[tuple[str, EmailMessage]]:
        """(kind, mail) of every mail the relay delivered to `address`, oldest first; the kind is
        the outbox row's, found by the mail's Message-ID."""
        got = []
        for envelope in list(self.captured.received):
            if address in envelope.rcpt_tos:
                msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=default)
                got.append(msg)
        with self.app.sessions() as s:
            kinds = {row.message_id: row.kind for row in s.scalars(select(Outbox))}
        return [(kinds.get(m["Message-ID"].strip(), "?"), m) for m in got]

    def next_mail(self, address: str, kind: str, seen: int) -> EmailMessage:
        """Wait for the first mail of `kind` to `address` beyond the `seen` first ones."""
        wait_for(lambda: any(k == kind for k, _ in self.inbox(address)[seen:]), timeout=30)
        return next(m for k, m in self.inbox(address)[seen:] if k == kind)

    def ticket(self) -> Ticket:
        with self.app.sessions() as s:
            ticket = s.scalar(select(Ticket).where(Ticket.number == 1))
            assert ticket is not None
            s.expunge(ticket)
            return ticket

    def events(self) -> list[Event]:
        with self.app.sessions() as s:
            rows = list(s.scalars(select(Event).join(Ticket).where(Ticket.number == 1).order_by(Event.id)))
            s.expunge_all()
            return rows


@pytest.fixture
def desk(tmp_path: Path, db_url: str, clock) -> Iterator[Desk]:
    with relay() as (captured, relay_port):
        settings = make_settings(
            tmp_path,
            db_url,
            smtp={"host": "127.0.0.1", "port": 0},
            outgoing={"relay_host": "127.0.0.1", "relay_port": relay_port},
            staff=[
                {"address": ALICE, "name": "Alice Jones", "team": "printers"},
                {"address": DISPATCHER, "name": "Dana Dispatcher", "role": "dispatcher"},
            ],
            # The receiving MTA whose verdicts count. No mail below carries its header: every
            # proof in this conversation is a reply token that reached its person's mailbox.
            acknowledgements={"trusted_authserv_ids": ["mx.example.com"]},
        )
        app = App.build(settings, clock=clock)
        try:
            with running_daemon(app) as running:
                yield Desk(app, running.smtp_port, captured)
        finally:
            app.close()


def text_of(msg: EmailMessage) -> str:
    return msg.get_body(preferencelist=("plain",)).get_content()


def reply_to(
    msg: EmailMessage, sender: str, body: str, *, quote: bool = True, files: list[tuple[str, str, bytes]] = ()
) -> tuple[str, bytes]:
    """The reply a mail client writes: to the Reply-To, "Re: " + subject, threaded by
    In-Reply-To/References, the answered mail quoted below the new text."""
    to = email.utils.parseaddr(str(msg["Reply-To"] or msg["From"]))[1]
    references = f"{msg['References'] or ''} {msg['Message-ID']}".strip()
    quoted = "".join(f"> {line}\n" for line in text_of(msg).splitlines()) if quote else ""
    when = msg["Date"]
    said = f"\nOn {when}, {msg['From']} wrote:\n{quoted}" if quote else ""
    raw = mail(
        sender=sender,
        to=to,
        subject=f"Re: {msg['Subject']}",
        body=body + said,
        headers={"In-Reply-To": str(msg["Message-ID"]), "References": references},
        attachments=files,
    )
    return to, raw


def test_a_whole_conversation_over_smtp(desk: Desk) -> None:
    # 1. An employee writes, with a screenshot.
    desk.send(
        EMPLOYEE,
        mail(
            sender=f"Emma Example <{EMPLOYEE}>",
            subject="Printer on floor 3 jams",
            body="The printer on floor 3 jams on every second page since this morning.\n",
            attachments=[("jam.png", "image/png", SCREENSHOT)],
        ),
    )
    ack = desk.next_mail(EMPLOYEE, "ack", 0)
    assert "[HD #1]" in ack["Subject"] and "opened ticket HD #1" in text_of(ack)
    notice = desk.next_mail(DISPATCHER, "dispatcher_new", 0)
    assert "floor 3 jams" in text_of(notice) and "#assign" in text_of(notice)

    # 2. A forger writes as the dispatcher: no token, no trusted Authentication-Results.
    desk.send(
        DISPATCHER,
        mail(
            sender=f"Dana Dispatcher <{DISPATCHER}>",
            subject="Re: [HD #1] Printer on floor 3 jams",
            body="#assign alice\n",
        ),
    )
    # The real dispatcher is told, at her own address, how commands are sent; nothing changed.
    explained = desk.next_mail(DISPATCHER, "command_unproven", 1)
    assert "#assign alice" in text_of(explained) or "command" in text_of(explained).lower()
    assert desk.ticket().assignee_id is None and desk.ticket().priority == "normal"
    assert not [k for k, _ in desk.inbox(ALICE)], "the forgery told alice nothing"

    # 3. The dispatcher replies to the notice with two commands above the quote.
    dispatcher_seen = len(desk.inbox(DISPATCHER))
    _, raw = reply_to(notice, f"Dana Dispatcher <{DISPATCHER}>", "#assign alice\n#priority high\n")
    desk.send(DISPATCHER, raw)
    receipt = desk.next_mail(DISPATCHER, "command_receipt", dispatcher_seen)
    receipt_text = text_of(receipt)
    assert "alice@example.com" in receipt_text and "high" in receipt_text
    assert "nothing was changed" not in receipt_text.lower()
    assignment = desk.next_mail(ALICE, "assigned", 0)
    assert "[HD #1]" in assignment["Subject"]
    assert "jams on every second page" in text_of(assignment), "the thread so far"
    files = {p.get_filename(): p.get_content() for p in assignment.iter_attachments()}
    assert files == {"jam.png": SCREENSHOT}, "the employee's screenshot travels with the assignment"
    ticket = desk.ticket()
    assert ticket.priority == "high" and ticket.status == Status.OPEN

    # 4. Alice answers from her mail client: a reply to the assignment.
    _, raw = reply_to(assignment, f"Alice Jones <{ALICE}>", "Please open tray 2 and take out the torn sheet.\n")
    desk.send(ALICE, raw)
    answer = desk.next_mail(EMPLOYEE, "answer", 1)
    answer_text = text_of(answer)
    assert "Please open tray 2" in answer_text and "[HD #1]" in answer["Subject"]
    assert "jams on every second page since" not in answer_text, "alice's quote of the thread stays out"
    assert ack["Message-ID"] in str(answer["References"]), "threads under the employee's earlier mail"
    ticket = desk.ticket()
    assert ticket.status == Status.PENDING and ticket.first_response_at is not None

    # 5. The employee replies with the quote below.
    alice_seen = len(desk.inbox(ALICE))
    _, raw = reply_to(answer, f"Emma Example <{EMPLOYEE}>", "Done, but it jams again after ten pages.\n")
    desk.send(EMPLOYEE, raw)
    relayed = desk.next_mail(ALICE, "requester_reply", alice_seen)
    relayed_text = text_of(relayed)
    assert "jams again after ten pages" in relayed_text
    quoted = [line for line in relayed_text.splitlines() if line.lstrip().startswith(">")]
    assert "Please open tray 2" not in relayed_text and not quoted, "without the quoted history"
    assert desk.ticket().status == Status.OPEN

    # 6. Alice closes it, saying what she did.
    employee_seen = len(desk.inbox(EMPLOYEE))
    _, raw = reply_to(relayed, f"Alice Jones <{ALICE}>", "#close Replaced the pickup roller.\n")
    desk.send(ALICE, raw)
    # One mail tells the employee what was done and that the ticket is closed.
    closed = desk.next_mail(EMPLOYEE, "answer", employee_seen)
    closed_text = text_of(closed)
    assert "Replaced the pickup roller." in closed_text and "[HD #1]" in closed["Subject"]
    assert "now closed" in closed_text and "reply within 14 days" in closed_text
    assert desk.ticket().status == Status.CLOSED

    # 7. The audit trail: who, when, by which evidence.
    trail = [(e.actor, e.action, e.field, e.new, e.evidence, e.at) for e in desk.events()]
    assert all(at is not None for *_, at in trail)

    def proof(actor: str, action: str, field: str | None = None) -> str:
        found = [ev for a, act, f, _, ev, _ in trail if a == actor and act == action and (field is None or f == field)]
        assert found, f"no {action} by {actor} in {trail}"
        return found[0]

    assert proof(EMPLOYEE, "created") == ""
    refusals = [new for a, act, _, new, _, _ in trail if a == DISPATCHER and act == "commands_refused"]
    assert len(refusals) == 1 and "not authenticated as dispatch@example.com" in refusals[0], trail
    assert "reply token issued to dispatch@example.com" in proof(DISPATCHER, "assigned")
    assert "reply token issued to dispatch@example.com" in proof(DISPATCHER, "priority")
    assert "reply token issued to alice@example.com" in proof(ALICE, "first_response")
    assert "reply token issued to alice@example.com" in proof(ALICE, "status")
    assignees = [new for a, act, _, new, _, _ in trail if act == "assigned"]
    assert assignees == [ALICE], "the forgery assigned nobody"
    statuses = [(a, new) for a, act, f, new, _, _ in trail if f == "status"]
    assert statuses == [
        (DISPATCHER, "open"),
        (ALICE, "pending"),
        (EMPLOYEE, "open"),
        (ALICE, "closed"),
    ], statuses
