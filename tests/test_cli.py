"""The `mailgate` command as an MTA or an admin runs it (real processes, real SQLite)."""

from __future__ import annotations

import mailbox
import subprocess
import sys
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from tests.mails import mail

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mailgate.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\nsecret = "cli-test-secret-0123"\n'
        '[addresses]\nsupport = "support@example.com"\ndispatcher = "dispatch@example.com"\n'
    )
    assert run(tmp_path, "db", "upgrade").returncode == 0
    return tmp_path


def run(
    cwd: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mailgate", *args], input=stdin, capture_output=True, cwd=cwd, env=full_env, timeout=120
    )


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode()


def test_ingest_from_a_pipe_then_show_the_ticket(workdir: Path) -> None:
    raw = mail(body="The printer jams.\n")
    first = run(workdir, "ingest", "-", stdin=raw)
    assert first.returncode == 0 and out(first).strip() == "-: new_ticket HD #1"
    again = run(workdir, "ingest", "-", stdin=raw)
    assert again.returncode == 0 and "duplicate HD #1" in out(again)

    listing = out(run(workdir, "tickets", "list", "--status", "new"))
    assert "HD #1" in listing and "dana@example.com" in listing
    show = run(workdir, "tickets", "show", "1")
    text = out(show)
    assert "The printer jams." in text and "(ack, outbox: queued)" in text and "(dispatcher_new" in text
    missing = run(workdir, "tickets", "show", "99")
    assert missing.returncode == 1 and b"no ticket #99" in missing.stderr


def test_mail_without_a_ticket_can_be_found_with_its_reasons(workdir: Path) -> None:
    run(workdir, "ingest", "-", stdin=mail(subject="Automatic reply: away", headers={"Auto-Submitted": "auto-replied"}))
    listing = out(run(workdir, "messages", "list", "--no-ticket"))
    assert "auto" in listing and "Automatic reply: away" in listing
    detail = out(run(workdir, "messages", "show", "1"))
    assert "classify: Auto-Submitted: auto-replied" in detail and "ticket -" in detail


def test_ingest_exits_75_when_the_database_is_unreachable(workdir: Path) -> None:
    result = run(
        workdir,
        "ingest",
        "-",
        stdin=mail(),
        env={"MAILGATE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2"},
    )
    assert result.returncode == 75, result.stderr
    assert b"Traceback" not in result.stderr and b"temporary failure" in result.stderr


def test_ingest_exits_75_when_it_cannot_start(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    result = run(tmp_path, "ingest", "-", stdin=mail(), env={"MAILGATE_DATA_DIR": str(tmp_path / "afile")})
    assert result.returncode == 75 and b"mail left with the MTA" in result.stderr
    assert b"Traceback" not in result.stderr


def test_import_refuses_what_is_not_a_mailbox(workdir: Path) -> None:
    (workdir / "notes.txt").write_text("hello\n")
    result = run(workdir, "import", "mbox", str(workdir / "notes.txt"))
    assert result.returncode == 65 and b"holds no mail as mbox" in result.stderr
    result = run(workdir, "import", "maildir", str(workdir))
    assert result.returncode == 65 and b"not a Maildir" in result.stderr


def test_check_config_says_per_item_what_is_wrong(workdir: Path) -> None:
    from tests.smtp_peers import free_port, relay

    ok = run(workdir, "check-config")
    assert ok.returncode == 0 and out(ok).splitlines()[0] == "OK   database"
    down = run(
        workdir,
        "check-config",
        env={"MAILGATE_OUTGOING__RELAY_HOST": "127.0.0.1", "MAILGATE_OUTGOING__RELAY_PORT": str(free_port())},
    )
    assert down.returncode == 1 and "FAIL relay 127.0.0.1:" in out(down) and "Connection refused" in out(down)
    with relay() as (_, port):
        up = run(
            workdir,
            "check-config",
            env={"MAILGATE_OUTGOING__RELAY_HOST": "127.0.0.1", "MAILGATE_OUTGOING__RELAY_PORT": str(port)},
        )
    assert up.returncode == 0 and f"OK   relay 127.0.0.1:{port}" in out(up)


def test_a_database_without_schema_is_explained(tmp_path: Path) -> None:
    result = run(tmp_path, "tickets", "list", env={"MAILGATE_DATA_DIR": str(tmp_path / "empty")})
    assert result.returncode == 78
    assert b"run `mailgate db upgrade`" in result.stderr and b"Traceback" not in result.stderr


def test_unparseable_input_is_quarantined_shown_and_retried(workdir: Path) -> None:
    garbage = b"this is not a mail at all\n"
    result = run(workdir, "ingest", "-", stdin=garbage)
    assert result.returncode == 0 and "quarantined" in out(result)
    assert "no header section" in out(run(workdir, "quarantine", "list"))
    shown = run(workdir, "quarantine", "show", "1")
    assert shown.stdout.endswith(garbage)
    retry = run(workdir, "quarantine", "retry", "1")
    assert retry.returncode == 65 and b"still unparseable" in retry.stderr
    assert out(run(workdir, "quarantine", "list")).count("\n") == 1  # no second quarantine row


def test_import_mbox_prints_a_summary(workdir: Path) -> None:
    box = mailbox.mbox(workdir / "old.mbox")
    first = mail(subject="VPN down", message_id="<a1@x.org>")
    for raw in (
        first,
        mail(subject="Re: [HD #1] VPN down", body="still down\n"),
        first,  # the same mail twice
        mail(subject="Out of office", headers={"Auto-Submitted": "auto-replied"}),
    ):
        box.add(raw)
    box.add(b"From: \n\nnot much of a mail\n")
    box.close()
    result = run(workdir, "import", "mbox", str(workdir / "old.mbox"))
    assert result.returncode == 0, result.stderr
    assert out(result).strip() == (
        "5 mails: 1 new tickets, 1 replies, 1 duplicates, 1 auto-generated, 0 bounces, 1 quarantined, "
        "0 failed (not stored)"
    )


def test_import_maildir(workdir: Path) -> None:
    box = mailbox.Maildir(workdir / "Maildir", create=True)
    for i in range(3):
        box.add(mail(subject=f"problem {i}", sender=f"user{i}@example.com"))
    result = run(workdir, "import", "maildir", str(workdir / "Maildir"))
    assert "3 mails: 3 new tickets" in out(result)


def test_outbox_flush_delivers_to_the_local_maildir(workdir: Path) -> None:
    run(workdir, "ingest", "-", stdin=mail())
    result = run(workdir, "outbox", "flush")
    assert result.returncode == 0 and "sent 2" in out(result)
    delivered = [m for m in mailbox.Maildir(workdir / "data" / "outgoing", create=False)]
    subjects = sorted(str(make_header(decode_header(m["Subject"]))) for m in delivered)
    assert subjects[0] == "[HD #1] New: Printer on 3rd floor jams — Dana Smith"
    assert subjects[1] == "[HD #1] Printer on 3rd floor jams"
    assert "sent 0" in out(run(workdir, "outbox", "flush"))  # nothing is delivered twice


def test_spool_list_shows_what_waits_and_why(workdir: Path) -> None:
    from mailgate.config import load_settings
    from mailgate.spool import Spool

    assert out(run(workdir, "spool", "list")).strip() == "spool is empty"
    queue = Spool.open(load_settings(workdir / "mailgate.toml").spool_database_url)
    waiting = queue.put(mail(), "smtp", "dana@example.com", ["support@example.com"])
    failing = queue.put(mail(), "smtp", "erin@example.com", ["support@example.com"])
    (taken,) = [t for t in queue.take(10) if t.id == failing]
    queue.failed(taken, "OperationalError: disk I/O error")
    queue.close()
    lines = out(run(workdir, "spool", "list")).splitlines()
    assert [line.split()[0] for line in lines] == [str(waiting), str(failing)]
    assert "<dana@example.com> -> support@example.com" in lines[0] and "attempts" not in lines[0]
    assert "attempts 1" in lines[1] and "disk I/O error" in lines[1]
