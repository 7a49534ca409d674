"""`mailgate import` takes old mail as history: dated by when it was written, oldest first so
replies thread, and nobody is mailed (an import must not spam the company)."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

from tests.mails import mail
from tests.test_cli import here, run, workdir  # noqa: F401  (fixtures used by name)


def _box(path: Path, mails: list[bytes]) -> Path:
    box = mailbox.mbox(path)
    for raw in mails:
        box.add(raw)
    box.close()
    return path


def _dated(raw: bytes, date: str, received: str | None = None) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"Date:"))
    extra = f"Date: {date}\r\n".encode()
    if received:
        extra = f"Received: from mx.example.com by mail.example.com; {received}\r\n".encode() + extra
    return extra + head + b"\r\n\r\n" + body


def _outbox(workdir: Path) -> list[str]:  # noqa: F811
    listing = run("outbox", "list").stdout.strip()
    return [] if listing == "outbox is empty" else listing.splitlines()


def test_mail_from_2019_queues_nothing_and_opens_in_2019(workdir: Path) -> None:  # noqa: F811
    request = _dated(mail(subject="Printer jams", message_id="<req@x>"), "Mon, 01 Jul 2019 10:00:00 +0200")
    box = _box(workdir / "old.mbox", [request])
    result = run("import", "mbox", str(box))
    assert result.exit_code == 0, result.output
    assert "imported as history: dated by when written, no acknowledgements, no notices" in result.stdout
    assert _outbox(workdir) == []
    ticket = json.loads(run("tickets", "show", "1", "--json").stdout)
    assert ticket["opened"].startswith("2019-07-01T08:00")
    assert ticket["thread"][0]["at"].startswith("2019-07-01T08:00")
    decisions = run("messages", "show", "1").stdout
    assert "history: imported as history, dated by Date (2019-07-01 08:00 UTC)" in decisions


def test_a_date_that_disagrees_with_received_is_not_believed(workdir: Path) -> None:  # noqa: F811
    raw = _dated(mail(), "Thu, 01 Jan 1970 00:00:00 +0000", received="Tue, 12 Mar 2019 09:30:00 +0000")
    run("import", "mbox", str(_box(workdir / "old.mbox", [raw])))
    ticket = json.loads(run("tickets", "show", "1", "--json").stdout)
    assert ticket["opened"].startswith("2019-03-12T09:30")


def test_replies_thread_even_when_the_box_has_them_first(workdir: Path) -> None:  # noqa: F811
    request = _dated(mail(subject="VPN down", message_id="<vpn@x>"), "Mon, 01 Jul 2019 10:00:00 +0000")
    reply = _dated(
        mail(subject="Re: VPN down", message_id="<vpn-2@x>", headers={"In-Reply-To": "<vpn@x>"}, body="Still down.\n"),
        "Tue, 02 Jul 2019 10:00:00 +0000",
    )
    result = run("import", "mbox", str(_box(workdir / "old.mbox", [reply, request])))
    assert "1 new tickets, 1 replies" in result.stdout, result.stdout
    assert "Still down." in run("tickets", "show", "1").stdout
    assert _outbox(workdir) == []  # the reply sends nothing either


def test_closed_imports_close_their_tickets_at_the_time_of_the_mail(workdir: Path) -> None:  # noqa: F811
    raw = _dated(mail(), "Mon, 01 Jul 2019 10:00:00 +0000")
    result = run("import", "mbox", str(_box(workdir / "old.mbox", [raw])), "--closed")
    assert result.exit_code == 0 and "new tickets closed" in result.stdout
    ticket = json.loads(run("tickets", "show", "1", "--json").stdout)
    assert ticket["status"] == "closed"


def test_notify_imports_as_new_mail(workdir: Path) -> None:  # noqa: F811
    raw = _dated(mail(), "Mon, 01 Jul 2019 10:00:00 +0000")
    result = run("import", "mbox", str(_box(workdir / "old.mbox", [raw])), "--notify")
    assert result.exit_code == 0 and "senders acknowledged" in result.stdout
    kinds = [line.split()[2] for line in _outbox(workdir)]
    assert sorted(kinds) == ["ack", "dispatcher_new"]
    assert run("import", "mbox", str(workdir / "old.mbox"), "--notify", "--closed").exit_code == 64


def test_a_history_of_one_busy_person_is_not_held_as_a_robot(workdir: Path) -> None:  # noqa: F811
    mails = [
        _dated(mail(subject=f"Request {n}", message_id=f"<busy-{n}@x>"), f"Mon, {n + 1:02d} Jul 2019 10:00:00 +0000")
        for n in range(25)
    ]
    result = run("import", "mbox", str(_box(workdir / "old.mbox", mails)))
    assert "25 new tickets" in result.stdout and "held" not in result.stdout, result.stdout


def test_closed_imports_keep_replies_on_their_closed_ticket(workdir: Path) -> None:  # noqa: F811
    request = _dated(mail(subject="VPN down", message_id="<vpn@x>"), "Mon, 01 Jul 2019 10:00:00 +0000")
    reply = _dated(
        mail(subject="Re: VPN down", message_id="<vpn-2@x>", headers={"In-Reply-To": "<vpn@x>"}, body="Works now.\n"),
        "Tue, 02 Jul 2019 10:00:00 +0000",
    )
    result = run("import", "mbox", str(_box(workdir / "old.mbox", [request, reply])), "--closed")
    assert "1 new tickets, 1 replies" in result.stdout, result.stdout
    ticket = json.loads(run("tickets", "show", "1", "--json").stdout)
    assert ticket["status"] == "closed"
    replied = [i for i in ticket["thread"] if i["type"] == "message"][-1]
    assert replied["at"].startswith("2019-07-02T10:00") and "Works now." in replied["text"]
    assert all(e["at"].startswith("2019-07-0") for e in ticket["thread"] if e["type"] == "event")
