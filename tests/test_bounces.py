"""Bounces as real MTAs send them: the person our mail failed to reach is marked undeliverable
(the desk stops mailing a dead address), and no bounce is ever acknowledged.

Each bounce returns our acknowledgement's Message-ID (the signed token that ties it to Dana), the
way the MTA in question does: in a returned-headers part, or pasted into the text.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.ingest.bounces import read_bounce
from mailgate.ingest.parse import parse
from mailgate.ingest.pipeline import ingest
from mailgate.models import Person
from tests.mails import mail
from tests.test_ingest import new_ticket, outbox

RETURNED = "From: IT Help Desk <support@example.com>\r\nTo: {rcpt}\r\nSubject: [HD #1] x\r\nMessage-ID: {ack}\r\n"


def _report(ack: str, fields: str, content_type: str = "multipart/report; report-type=delivery-status") -> str:
    return (
        f'Content-Type: {content_type}; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.com\r\n\r\n{fields}\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n" + RETURNED.format(rcpt="dana@example.com", ack=ack) + "\r\n"
        "--B--\r\n"
    )


def _dsn(ack: str, fields: str, content_type: str = "multipart/report; report-type=delivery-status") -> bytes:
    head = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\nTo: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-1@mx.example.com>\r\nMIME-Version: 1.0\r\n"
    )
    return (head + _report(ack, fields, content_type)).encode()


def no_report_type(ack: str) -> bytes:
    fields = "Final-Recipient: rfc822; dana@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    return _dsn(ack, fields, content_type="multipart/report")


def nested_in_mixed(ack: str) -> bytes:
    # A gateway that wraps the report and adds its own note; the sender is no mailer-daemon.
    fields = "Final-Recipient: rfc822; dana@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    return (
        "From: Mail Gateway <gateway@mx.example.com>\r\nTo: support@example.com\r\nSubject: Delivery report\r\n"
        'Message-ID: <dsn-2@mx.example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="M"\r\n\r\n'
        "--M\r\nContent-Type: text/plain\r\n\r\nA report from the gateway follows.\r\n\r\n"
        "--M\r\n" + _report(ack, fields) + "\r\n--M--\r\n"
    ).encode()


def action_with_comment(ack: str) -> bytes:
    fields = (
        "Final-Recipient: rfc822; dana@example.com\r\nAction: failed (bad destination mailbox address)\r\n"
        "Status: 5.1.1 (unknown user)\r\n"
    )
    return _dsn(ack, fields)


def bare_smtp_status(ack: str) -> bytes:
    # No Action field, and the SMTP reply code where the enhanced status code belongs.
    return _dsn(ack, "Final-Recipient: rfc822; dana@example.com\r\nStatus: 553\r\n")


def original_recipient(ack: str) -> bytes:
    # Dana's mailbox forwards to another host; that one failed. We sent to dana@example.com.
    fields = (
        "Original-Recipient: rfc822; dana@example.com\r\nFinal-Recipient: rfc822; dana.smith@old-host.example.com\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n"
    )
    return _dsn(ack, fields)


def qmail(ack: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.com\r\nTo: support@example.com\r\nSubject: failure notice\r\n"
        "Message-ID: <qmail-1@mx.example.com>\r\n\r\n"
        "Hi. This is the qmail-send program at mx.example.com.\r\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        "<dana@example.com>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        "--- Below this line is a copy of the message.\r\n\r\n"
        "Return-Path: <support@example.com>\r\n" + RETURNED.format(rcpt="dana@example.com", ack=ack) + "\r\nHello\r\n"
    ).encode()


def postfix_without_dsn(ack: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\nTo: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <pf-1@mx.example.com>\r\n\r\n"
        "This is the Postfix program at host mx.example.com.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. It's attached below.\r\n\r\n"
        "For further assistance, please send mail to <postmaster@mx.example.com>\r\n\r\n"
        "\t\t\tThe Postfix program\r\n\r\n"
        "<dana@example.com>: host mail.example.com[192.0.2.1] said: 550 5.1.1\r\n"
        "    <dana@example.com>: Recipient address rejected: User unknown (in reply to RCPT TO command)\r\n\r\n"
        + RETURNED.format(rcpt="dana@example.com", ack=ack)
        + "\r\n"
    ).encode()


def postfix_delay_warning(ack: str) -> bytes:
    return (
        postfix_without_dsn(ack)
        .replace(b"Undelivered Mail Returned to Sender", b"Delayed Mail (still being retried)")
        .replace(b"It's attached below.", b"This is a warning message only; you do not need to resend.")
    )


def exchange_prose(ack: str) -> bytes:
    return (
        "From: System Administrator <postmaster@example.com>\r\nTo: support@example.com\r\n"
        "Subject: Undeliverable: [HD #1] x\r\nMessage-ID: <ex-1@example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="X"\r\n\r\n'
        "--X\r\nContent-Type: text/plain\r\n\r\n"
        "Your message\r\n\r\n  To:      Dana Smith\r\n  Subject: [HD #1] x\r\n"
        "  Sent:    Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\n"
        "did not reach the following recipient(s):\r\n\r\n"
        "DANA@EXAMPLE.COM on Mon, 23 Nov 2026 09:01:00 +0000\r\n"
        "    The recipient name is not recognized\r\n"
        "    MSEXCH:IMS:EXAMPLE:HQ:EX01 0 (000C05A6) Unknown Recipient\r\n\r\n"
        "--X\r\nContent-Type: message/rfc822\r\n\r\n"
        + RETURNED.format(rcpt="dana@example.com", ack=ack)
        + "\r\nHello\r\n\r\n--X--\r\n"
    ).encode()


BOUNCES: list[Callable[[str], bytes]] = [
    no_report_type,
    nested_in_mixed,
    action_with_comment,
    bare_smtp_status,
    original_recipient,
    qmail,
    postfix_without_dsn,
    exchange_prose,
]


@pytest.mark.parametrize("make_bounce", BOUNCES, ids=lambda f: f.__name__)
def test_bounce_of_our_ack_marks_the_address_undeliverable(app: App, make_bounce: Callable[[str], bytes]) -> None:
    number = new_ticket(app)
    ack_id = outbox(app, "ack")[0].message_id
    result = ingest(app, make_bounce(ack_id), "smtp")
    assert (result.outcome, result.ticket_number) == ("bounce", number), result.trace
    with app.sessions() as s:
        dana = s.scalar(select(Person).where(Person.address == "dana@example.com"))
        assert dana.undeliverable_since is not None, result.trace
    assert len(outbox(app)) == 2  # the ack and the dispatcher's notice; the bounce is not answered


def test_delay_warning_marks_nobody(app: App) -> None:
    number = new_ticket(app)
    result = ingest(app, postfix_delay_warning(outbox(app, "ack")[0].message_id), "smtp")
    assert (result.outcome, result.ticket_number) == ("bounce", number), result.trace
    with app.sessions() as s:
        assert s.scalar(select(Person).where(Person.address == "dana@example.com")).undeliverable_since is None


def _return_path_bounce() -> bytes:
    # No null sender, no robot in From, no report: only the return path and the subject say so.
    return mail(
        sender="Mail System <mail@mx.example.net>",
        subject="Message could not be delivered",
        body="Your message to nobody@example.net could not be delivered: mailbox unavailable.\n",
        headers={"Return-Path": "<MAILER-DAEMON@mx.example.net>"},
    )


def test_bounce_with_a_mailer_daemon_return_path_is_not_acknowledged(app: App) -> None:
    result = ingest(app, _return_path_bounce(), "imap:support")
    assert result.outcome == "bounce", result.trace
    assert outbox(app) == []


def test_bounce_with_a_mailer_daemon_envelope_sender_is_not_acknowledged(app: App) -> None:
    raw = mail(sender="Mail System <mail@mx.example.net>", subject="Message could not be delivered")
    result = ingest(app, raw, "smtp", envelope_sender="MAILER-DAEMON@mx.example.net")
    assert result.outcome == "bounce", result.trace
    assert outbox(app) == []


def test_a_person_writing_about_an_undeliverable_mail_is_no_bounce(app: App) -> None:
    raw = mail(subject="Fwd: Undeliverable: invoice", body="Why does this bounce? It went to dana@example.com.\n")
    result = ingest(app, raw, "smtp")
    assert result.outcome == "new_ticket", result.trace
    assert read_bounce(parse(raw, 10_000_000)) is None


def test_prose_detectors_keep_only_addresses() -> None:
    """Heuristics read "addresses" out of uuencoded lines; a bounce names none of those."""
    raw = (
        b"From: MAILER-DAEMON@mx.example.com\r\nSubject: failure notice\r\nMessage-ID: <u@mx.example.com>\r\n\r\n"
        b"Hi. This is the qmail-send program at mx.example.com.\r\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n\r\n"
        b'<```"Z"@1G```#`%!>:\r\nSorry.\r\n'
    )
    bounce = read_bounce(parse(raw, 10_000_000))
    assert bounce is not None and bounce.failures == []
