"""Attachment names and types from hostile or careless senders, as the desk stores and shows them
(SQLite and PostgreSQL): one rule for every file, whether a MIME part or inside a winmail.dat."""

from __future__ import annotations

from sqlalchemy import select

from mailgate import views
from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Attachment, Outbox, Person, Quarantine
from tests.mails import mail
from tests.tnef import winmail_dat

INJECTED = "../../etc/passwd\nBcc: victim@example.net"
BIG = b"x" * 1_100_000  # over max_attachment_bytes (conftest): the acknowledgement names it too


def names(app: App) -> list[str]:
    with app.sessions() as s:
        return [a.filename for a in s.scalars(select(Attachment).order_by(Attachment.id))]


def mailed(app: App) -> dict[str, str]:
    with app.sessions() as s:
        return {o.kind: o.body for o in s.scalars(select(Outbox))}


def shown(app: App, number: int) -> list[str]:
    with app.sessions() as s:
        return views.ticket_thread(views.ticket_detail(s, "HD", number))


def multipart(*parts: bytes) -> bytes:
    body = b"".join(b"--b\r\n" + p + b"\r\n" for p in parts) + b"--b--\r\n"
    return (
        b"From: Dana Smith <dana@example.com>\r\nTo: support@example.com\r\nSubject: files\r\n"
        b'Message-ID: <names@client.example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"'
        b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nThe files.\r\n" + body
    )


def test_winmail_dat_file_names_are_made_safe_and_inject_no_lines(app: App) -> None:
    tnef = winmail_dat([(INJECTED, BIG), ("Größe.txt", b"sizes")])  # titles in Windows-1252
    result = ingest(app, mail(attachments=[("winmail.dat", "application/ms-tnef", tnef)]), "smtp")
    assert result.outcome == "new_ticket", result.trace
    assert names(app) == ["passwd Bcc: victim@example.net", "Größe.txt"]
    sent = mailed(app)
    for text in (sent["ack"], sent["dispatcher_new"], *shown(app, result.ticket_number)):
        assert not any(line.lstrip().startswith("Bcc:") for line in text.splitlines()), text
    assert "passwd Bcc: victim@example.net" in sent["ack"] and "Größe.txt" in sent["dispatcher_new"]


def attached(filename_param: str, ctype: str = "application/pdf") -> bytes:
    """A part whose Content-Disposition carries `filename_param` (e.g. 'filename="a.pdf"')."""
    return f"Content-Type: {ctype}\r\nContent-Disposition: attachment; {filename_param}\r\n\r\ndata".encode()


def test_mime_file_names_lose_directories_dots_controls_and_excess_length(app: App) -> None:
    long_name = "Quarterly report " * 20 + "final.pdf"
    raw = multipart(
        attached('filename="C:\\\\Users\\\\ann\\\\report.pdf"'),
        attached('filename="../../../.bashrc"', "text/plain"),
        attached("filename*=utf-8''notes%0ABcc%3A%20x%40y.txt", "text/plain"),
        attached('filename="invoice\u202efdp.exe"'),  # RIGHT-TO-LEFT OVERRIDE: shown as "invoiceexe.pdf"
        attached('filename=".."'),
        attached(f'filename="{long_name}"'),
    )
    assert ingest(app, raw, "smtp").outcome == "new_ticket"
    got = names(app)
    assert got[:5] == ["report.pdf", "bashrc", "notes Bcc: x@y.txt", "invoice fdp.exe", "part-5.pdf"]
    assert got[5].startswith("Quarterly report") and got[5].endswith(".pdf") and len(got[5].encode()) <= 255


def test_nameless_attachments_get_an_extension_from_their_type(app: App) -> None:
    raw = multipart(
        b"Content-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nlog lines",
        b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=",
        b"Content-Type: application/x-never-heard-of\r\n\r\n\x01\x02",
        b"Content-Type: application/pdf\r\n\r\n%PDF-1.4",
    )
    assert ingest(app, raw, "smtp").outcome == "new_ticket"
    assert names(app) == ["part-1.txt", "part-2.png", "part-3.bin", "part-4.pdf"]


def test_a_nul_in_a_content_type_is_stored_the_same_on_every_backend(app: App) -> None:
    raw = multipart(b"Content-Type: application/p\x00df\x1b[2J\r\nContent-Disposition: attachment\r\n\r\n%PDF-1.4")
    result = ingest(app, raw, "smtp")
    assert result.outcome == "new_ticket", result.trace
    with app.sessions() as s:
        (row,) = s.scalars(select(Attachment))
        assert (row.content_type, row.filename) == ("application/pdf", "part-1.pdf")
        assert not s.scalars(select(Quarantine)).all()


def test_a_nul_in_a_bounce_diagnostic_is_stored_the_same_on_every_backend(app: App) -> None:
    """The store itself drops what PostgreSQL cannot hold, whichever field a NUL reaches: here the
    diagnostic of a bounce of our acknowledgement, kept as the reason the address is not mailed."""
    number = ingest(app, mail(), "smtp").ticket_number
    with app.sessions() as s:
        ack_id = s.scalars(select(Outbox.message_id).where(Outbox.kind == "ack")).one()
    dsn = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\nTo: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-nul@mx.example.com>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
        "Final-Recipient: rfc822; dana@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 no such\x00 user\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: IT Help Desk <support@example.com>\r\nTo: dana@example.com\r\nMessage-ID: {ack_id}\r\n\r\n--B--\r\n"
    ).encode()
    result = ingest(app, dsn, "smtp")
    assert (result.outcome, result.ticket_number) == ("bounce", number), result.trace
    with app.sessions() as s:
        dana = s.scalars(select(Person).where(Person.address == "dana@example.com")).one()
        assert dana.undeliverable_since is not None
        assert "550 5.1.1 no such user" in dana.undeliverable_reason
        assert not s.scalars(select(Quarantine)).all()
