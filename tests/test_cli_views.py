"""What an admin reads from the command line: ticket numbers as people write them, times in the
desk's zone, lists with headers and filters, JSON, stored mail by Message-ID, attachments out of
the store, and quarantined mail without raw bytes on the terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.ingest.pipeline import ingest
from tests.mails import mail
from tests.test_cli import here, run, workdir  # noqa: F401  (fixtures used by name)


def _berlin(workdir: Path) -> None:  # noqa: F811
    config = workdir / "mailgate.toml"
    config.write_text(config.read_text() + '[tickets]\ntimezone = "Europe/Berlin"\n')


@pytest.mark.parametrize("form", ["1", "#1", "HD#1", "HD #1", "[HD #1]", "hd1", " [HD#1] "])
def test_tickets_show_takes_the_number_as_people_write_it(workdir: Path, form: str) -> None:  # noqa: F811
    run("ingest", "--now", "-", stdin=mail())
    shown = run("tickets", "show", form)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("HD #1: Printer on 3rd floor jams")


def test_a_ticket_number_that_is_none_says_what_is_expected(workdir: Path) -> None:  # noqa: F811
    shown = run("tickets", "show", "printer")
    assert shown.exit_code == 2 and "expected a ticket number such as 12, #12 or HD #12" in shown.stderr


def test_tickets_show_gives_the_deadline_at_the_hour_the_acknowledgement_promises(workdir: Path) -> None:  # noqa: F811
    _berlin(workdir)
    run("ingest", "--now", "-", stdin=mail())
    detail = json.loads(run("tickets", "show", "1", "--json").stdout)
    ack = next(i for i in detail["thread"] if i["type"] == "outgoing" and i["kind"] == "ack")
    promised = re.search(r"(\d\d:\d\d) \(Europe/Berlin\)", ack["text"])
    assert promised, ack["text"]
    head = run("tickets", "show", "1").stdout.splitlines()[2]
    due = re.search(r"first answer due \d{4}-\d\d-\d\d (\d\d:\d\d) \(Europe/Berlin\)", head)
    assert due and due.group(1) == promised.group(1), head
    assert "opened" in head and "(Europe/Berlin)" in head.split("opened")[1]


def test_every_list_names_the_zone_of_its_times(workdir: Path) -> None:  # noqa: F811
    _berlin(workdir)
    run("ingest", "--now", "-", stdin=mail())
    run("ingest", "--now", "-", stdin=b"not a mail\n")
    for command in (("tickets", "list"), ("messages", "list"), ("quarantine", "list")):
        header = run(*command).stdout.splitlines()[0]
        assert "(Europe/Berlin)" in header, (command, header)


def test_tickets_list_has_a_header_the_opening_time_and_filters(workdir: Path) -> None:  # noqa: F811
    run("ingest", "--now", "-", stdin=mail())
    run("ingest", "--now", "-", stdin=mail(sender="erik@example.com", subject="VPN down"))
    lines = run("tickets", "list").stdout.splitlines()
    assert lines[0].split()[:4] == ["ticket", "status", "prio", "opened"] and len(lines) == 3
    assert "VPN down" in run("tickets", "list", "--assignee", "none").stdout
    assert run("tickets", "list", "--assignee", "alice@example.com").stdout.strip() == "no tickets"
    assert run("tickets", "list", "--older-than", "1d").stdout.strip() == "no tickets"  # both opened just now
    assert run("tickets", "list", "--team", "network").stdout.strip() == "no tickets"
    bad = run("tickets", "list", "--older-than", "soon")
    assert bad.exit_code == 2 and "expected a number and a unit" in bad.stderr


def test_tickets_list_and_show_as_json(workdir: Path) -> None:  # noqa: F811
    run("ingest", "--now", "-", stdin=mail(subject="Bad \x1b]0;owned\x07 title \x9b2J"))
    rows = json.loads(run("tickets", "list", "--json").stdout)
    assert [(r["number"], r["requester"], r["status"]) for r in rows] == [(1, "dana@example.com", "new")]
    shown = run("tickets", "show", "1", "--json").stdout
    assert "\x1b" not in shown and "\x9b" not in shown  # escaped in the JSON text, not dropped
    assert "title" in json.loads(shown)["subject"]


def test_messages_show_by_message_id_as_the_log_prints_it(workdir: Path) -> None:  # noqa: F811
    run("ingest", "--now", "-", stdin=mail(message_id="<abc.123@client.example.org>"))
    for ref in ("<abc.123@client.example.org>", "abc.123@client.example.org", "1"):
        shown = run("messages", "show", ref)
        assert shown.exit_code == 0 and "Message-ID: <abc.123@client.example.org>" in shown.stdout, ref
    missing = run("messages", "show", "<nope@x>")
    assert missing.exit_code == 1 and "no stored message <nope@x>" in missing.stderr


def test_attachments_can_be_listed_and_saved_without_escaping_the_folder(workdir: Path) -> None:  # noqa: F811
    data = b"%PDF-1.4 invoice"
    run("ingest", "--now", "-", stdin=mail(attachments=[("../../invoice.pdf", "application/pdf", data)]))
    listing = run("attachments", "list", "HD #1")
    assert listing.exit_code == 0 and "application/pdf" in listing.stdout, listing.output
    rows = json.loads(run("attachments", "list", "1", "--json").stdout)
    assert len(rows) == 1 and rows[0]["size"] == len(data)
    out = workdir / "out"
    first = run("attachments", "save", "1", "--to", str(out))
    second = run("attachments", "save", "1", "--to", str(out), "--id", str(rows[0]["id"]))
    saved = sorted(out.iterdir())
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert [p.read_bytes() for p in saved] == [data, data]  # the second save did not overwrite the first
    assert all(p.parent == out for p in saved) and not (workdir / "invoice.pdf").exists()
    assert run("attachments", "save", "1", "--id", "999").exit_code == 1


def test_quarantine_show_summarises_and_keeps_raw_bytes_off_the_terminal(workdir: Path) -> None:  # noqa: F811
    raw = b"\x00\x01binary \x1bc garbage\n" * 3
    run("ingest", "--now", "-", stdin=raw)
    shown = run("quarantine", "show", "1")
    assert shown.exit_code == 0 and "reason:" in shown.stdout and "\x1b" not in shown.stdout
    to_file = workdir / "q.eml"
    assert run("quarantine", "show", "1", "--output", str(to_file)).exit_code == 0
    assert to_file.read_bytes() == raw
    # --raw to a real terminal is refused; to a pipe it is the exact bytes.
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "mailgate", "quarantine", "show", "1", "--raw"],
        stdout=follower,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env=env,
        timeout=60,
    )
    os.close(follower)
    os.close(leader)
    assert proc.returncode == 64 and b"refusing to write raw mail to a terminal" in proc.stderr


def test_outbox_list_of_a_state_with_none_says_what_it_holds(workdir: Path) -> None:  # noqa: F811
    run("ingest", "--now", "-", stdin=mail())
    run("outbox", "flush")
    empty = run("outbox", "list", "--state", "dead").stdout.strip()
    assert empty == "no dead mail in the outbox (it holds 2 sent)"


def test_history_lines_say_what_changed_in_words(workdir: Path) -> None:  # noqa: F811
    run("ingest", "--now", "-", stdin=mail())
    # A stranger quoting the tag gets a ticket of their own, linked to the one they named.
    run("ingest", "--now", "-", stdin=mail(sender="eve@example.net", subject="Re: [HD #1] Printer on 3rd floor jams"))
    shown = run("tickets", "show", "2").stdout
    assert "linked by mailgate" in shown and "to HD #1 (quoted-tag)" in shown, shown
    assert "None" not in shown


def test_a_missing_acknowledgement_says_why_in_tickets_show(workdir: Path) -> None:  # noqa: F811
    spam = mail(headers={"X-Spam-Flag": "YES", "X-Spam-Status": "Yes, score=9.1 required=5.0"})
    run("ingest", "--now", "-", stdin=spam)
    shown = run("tickets", "show", "1").stdout
    assert "[no acknowledgement:" in shown and "spam" in shown.split("[no acknowledgement:")[1].split("]")[0], shown
    assert "(ack, outbox" not in shown


def test_bidi_overrides_do_not_reach_the_terminal(workdir: Path) -> None:  # noqa: F811
    run("ingest", "--now", "-", stdin=mail(subject="invoice \u202etxt.exe"))
    out = run("tickets", "list").stdout + run("tickets", "show", "1").stdout
    assert "\u202e" not in out and "invoice" in out


def test_quarantine_show_output_never_overwrites(workdir: Path) -> None:  # noqa: F811
    run("ingest", "--now", "-", stdin=b"not a mail\n")
    there = workdir / "kept.eml"
    there.write_bytes(b"the admin's own file")
    result = run("quarantine", "show", "1", "--output", str(there))
    assert result.exit_code == 64 and "exists" in result.stderr
    assert there.read_bytes() == b"the admin's own file"


def test_tickets_show_gives_both_deadlines_the_pause_and_whether_each_was_met(tmp_path, sqlite_template) -> None:
    from tests import sla_desk, test_sla_cli

    app, config = test_sla_cli._desk(tmp_path, sqlite_template)
    answered = sla_desk.new_ticket(app, subject="Printer")  # Monday 09:00: first answer due 13:00
    late = sla_desk.new_ticket(app, subject="VPN down", sender="erin@example.com")
    app.clock.set(sla_desk.at(30, 10).astimezone(app.clock.now().tzinfo))
    answer = mail(sender="alice@example.com", subject=f"Re: [HD #{answered}] Printer", body="On my way.\n",
                  headers=sla_desk.PROVEN)  # fmt: skip
    ingest(app, answer, "smtp")  # proven hers: the first response; the ticket waits for Dana
    shown = test_sla_cli.run(config, "tickets", "show", str(answered), "--at", "2026-11-30T14:00")
    assert shown.exit_code == 0, shown.output
    head = shown.output.split("--- ")[0]
    assert "first response: due 2026-11-30 13:00, met 2026-11-30 10:00" in head
    assert "resolution: due " in head and ", paused" in head
    assert "clock paused: pending since 2026-11-30 10:00, until the requester replies" in head
    assert "times in Europe/Berlin" in head
    other = test_sla_cli.run(config, "tickets", "show", str(late), "--at", "2026-11-30T14:00", "--json")
    deadlines = json.loads(other.stdout)["deadlines"]
    assert [(d["target"], d["state"]) for d in deadlines] == [("first response", "breached"), ("resolution", "running")]
    assert deadlines[0]["due"] == "2026-11-30T13:00:00+01:00" and deadlines[0]["met_at"] is None
    text = test_sla_cli.run(config, "tickets", "show", str(late), "--at", "2026-11-30T12:00").output
    assert "first response: due 2026-11-30 13:00, running" in text
    assert "clock paused" not in text
    app.close()
