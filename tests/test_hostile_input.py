"""Odd and hostile mail on both databases: stored or quarantined, never a temporary failure
(which would make the MTA retry for days and then bounce it)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from mailgate.app import App
from mailgate.ingest import pipeline
from mailgate.ingest.pipeline import ingest
from mailgate.models import Message, Outbox, OutboxState, Person, Quarantine, Ticket
from mailgate.outgoing.outbox import deliver_due
from mailgate.outgoing.sender import MaildirSink
from tests.mails import mail


def _raw(headers: str, body: bytes = b"hello\r\n") -> bytes:
    return headers.replace("\n", "\r\n").encode("utf-8", "surrogateescape") + b"\r\n" + body


HOSTILE = {
    "long display name": _raw(f'From: "{"A" * 5000}" <a@example.com>\nTo: support@example.com\nSubject: x\n'),
    "5000-char Message-ID": _raw(f"From: a@example.com\nSubject: x\nMessage-ID: <{'m' * 5000}@example.com>\n"),
    "NUL in Message-ID": _raw("From: a@example.com\nSubject: x\nMessage-ID: <a\x00b@example.com>\n"),
    "NUL in address": _raw("From: Al <a\x00l@example.com>\nSubject: x\n"),
    "tag beyond any ticket": _raw("From: a@example.com\nSubject: Re: [HD #999999999999] x\n"),
    "10,000 References": _raw(
        "From: a@example.com\nSubject: x\nReferences: " + " ".join(f"<r{i}@x.org>" for i in range(10_000)) + "\n"
    ),
    "long content type": _raw(
        "From: a@example.com\nSubject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n",
        b"--b\r\nContent-Type: application/" + b"x" * 400 + b"\r\n\r\ndata\r\n--b--\r\n",
    ),
    "folded Message-ID without brackets": _raw("From: a@example.com\nSubject: x\nMessage-ID: foo\n bar\n"),
    "newline in an encoded display name": _raw(
        "From: =?utf-8?q?Dana=0ABcc=3A_evil=40x=2Eorg?= <dana@example.com>\nSubject: x\n"
    ),
    "8-bit garbage in headers": _raw("From: \udcff\udcfe <a@example.com>\nSubject: \udc80\udc81\udcff\n"),
    "invalid date": _raw("From: a@example.com\nSubject: x\nDate: Thu, 99 Foo 20269 25:61:61 +9999\n"),
    "deeply nested MIME": _raw(
        "From: a@example.com\nSubject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b0\n",
        b"".join(f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n".encode() for i in range(200))
        + b"--b200\r\nContent-Type: text/plain\r\n\r\ndeep\r\n",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_mail_is_stored_or_quarantined(app: App, name: str) -> None:
    result = ingest(app, HOSTILE[name], "smtp")
    assert result.outcome in ("new_ticket", "quarantined"), result.trace
    with app.sessions() as s:
        stored = s.scalar(select(func.count(Message.id))) + s.scalar(select(func.count(Quarantine.id)))
    assert stored == 1


def test_queued_mail_for_hostile_input_can_be_delivered(app: App, tmp_path) -> None:
    for name in ("folded Message-ID without brackets", "newline in an encoded display name"):
        ingest(app, HOSTILE[name], "smtp")
    ingest(app, mail(), "smtp")
    with app.sessions() as session:
        report = deliver_due(session, MaildirSink(tmp_path / "out"), app.clock.now(), 5)
    assert (report.sent, report.dead) == (6, 0)
    delivered = b"".join(p.read_bytes() for p in (tmp_path / "out" / "new").iterdir())
    assert b"\r\nBcc:" not in delivered and b"\nBcc:" not in delivered


def test_one_unrenderable_outbox_row_does_not_block_the_others(app: App, tmp_path) -> None:
    ingest(app, mail(), "smtp")
    with app.sessions() as s, s.begin():
        # A row no domain function writes (from an older release, or edited by hand): written here.
        first = s.scalar(select(Outbox).order_by(Outbox.id))
        first.headers = {**first.headers, "Subject": "broken\r\nBcc: evil@example.org"}
    with app.sessions() as session:
        report = deliver_due(session, MaildirSink(tmp_path / "out"), app.clock.now(), 5)
    assert (report.sent, report.dead) == (1, 1)
    with app.sessions() as s:
        dead = s.scalar(select(Outbox).where(Outbox.state == OutboxState.DEAD))
        assert "cannot be rendered" in dead.last_error


def test_a_parser_crash_quarantines_the_mail(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(raw: bytes, max_bytes: int, envelope_sender: str | None = None, bounds: object = None) -> None:
        raise UnicodeEncodeError("ascii", "\ufffd", 0, 1, "ordinal not in range")

    monkeypatch.setattr(pipeline, "parse", crash)
    raw = mail()
    result = ingest(app, raw, "smtp")
    assert result.outcome == "quarantined" and "parser failed: UnicodeEncodeError" in result.trace[0]["decision"]
    with app.sessions() as s:
        assert s.scalar(select(Quarantine.raw)) == raw


def test_new_people_copying_each_other_at_once_do_not_deadlock(app: App) -> None:
    # Each mail creates its sender, then a Cc the other mail creates too.
    pairs = []
    for i in range(10):
        a, b = f"a{i}@example.com", f"b{i}@example.com"
        pairs += [mail(sender=a, headers={"Cc": b}, subject=f"from a {i}"), mail(sender=b, headers={"Cc": a})]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda raw: ingest(app, raw, "smtp").outcome, pairs))
    assert outcomes == ["new_ticket"] * 20
    with app.sessions() as s:
        assert s.scalar(select(func.count(Ticket.id))) == 20
        assert s.scalar(select(func.count(Person.id)).where(Person.address.like("a%@example.com"))) == 10
