"""The `mailgate` command as an admin runs it (in-process with click's CliRunner, real SQLite),
and as an MTA runs it: real processes where the exit status or the process's imports are the point."""

from __future__ import annotations

import mailbox
import os
import re
import select
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from email.header import decode_header, make_header
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailgate.cli.root import cli
from mailgate.config import load_settings
from mailgate.spool import Spool, spool_dir
from tests.mails import mail

# What `mailgate ingest`, `--help` and `--version` must never load: each costs an MTA's pipe
# process a multiple of the work of writing the mail into the spool.
HEAVY_PACKAGES = {"alembic", "sqlalchemy", "jinja2", "pydantic", "pydantic_settings", "mailparser"}
# The commands of the README's table: each loads only when asked for, and --help lists them all.
COMMANDS = (
    "run",
    "imap",
    "check-config",
    "db",
    "ingest",
    "import",
    "tickets",
    "messages",
    "spool",
    "quarantine",
    "outbox",
    "attachments",
    "limits",
    "sla",
)
CONFIG = (
    'secret = "cli-test-secret-0123"\n'
    '[addresses]\nsupport = "support@example.com"\ndispatcher = "dispatch@example.com"\n'
)


@pytest.fixture(autouse=True)
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in a directory of its own, with no MAILGATE_* variable of the caller's."""
    for name in [n for n in os.environ if n.startswith("MAILGATE_")]:
        monkeypatch.delenv(name)
    # Nor the config of a mailgate installed on this machine (/etc/mailgate/mailgate.toml).
    monkeypatch.setattr("mailgate.config_file.DEFAULT_CONFIG_PATHS", (Path("mailgate.toml"),))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def workdir(here: Path, sqlite_template: Path) -> Path:
    """./mailgate.toml with its data in ./data, the schema already there."""
    (here / "mailgate.toml").write_text(f'data_dir = "{here / "data"}"\n' + CONFIG)
    (here / "data").mkdir()
    shutil.copy(sqlite_template, here / "data" / "mailgate.db")
    return here


def run(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, args, input=stdin, env=env)


def run_process(
    cwd: Path, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[bytes]:
    """`python -m mailgate ARGS` as an MTA starts it: a process of its own, the mail on stdin."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    return subprocess.run(
        [sys.executable, *python, "-m", "mailgate", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env={**clean, **(env or {})},
        timeout=60,
    )


def spooled(data_dir: Path) -> Spool:
    return Spool(spool_dir(data_dir))


# -- the MTA pipe: real processes --------------------------------------------------------------


def test_the_pipe_exits_0_with_the_mail_and_its_envelope_in_the_spool(workdir: Path) -> None:
    raw = mail(subject="Bounce", body="Undeliverable.\n")
    spool = spooled(workdir / "data")
    daemon = spool.listen_for_wakeups()  # stands in for a running `mailgate run`
    try:
        result = run_process(
            workdir, "ingest", "--source", "postfix", "--sender", "", "--recipient", "support@example.com", stdin=raw
        )
        assert result.returncode == 0, result.stderr
        readable, _, _ = select.select([daemon], [], [], 5)
        assert readable, "the running daemon was not told about the new mail"
    finally:
        daemon.close()
    (entry,) = spool.due(datetime.now(UTC))
    taken = spool.claim(entry)
    assert taken is not None and taken.raw == raw
    assert (taken.envelope.source, taken.envelope.sender) == ("postfix", "")  # "" is the null sender
    assert taken.envelope.recipients == ("support@example.com",)


def test_the_pipe_exits_75_when_the_spool_cannot_be_written(here: Path) -> None:
    (here / "afile").write_text("not a folder")
    result = run_process(here, "ingest", "-", stdin=mail(), env={"MAILGATE_DATA_DIR": str(here / "afile")})
    assert result.returncode == 75 and b"mail left with the MTA" in result.stderr
    assert b"Traceback" not in result.stderr


def test_the_pipe_exits_75_when_its_config_file_is_missing(here: Path) -> None:
    result = run_process(here, "--config", str(here / "nope.toml"), "ingest", stdin=mail())
    assert result.returncode == 75 and b"nope.toml does not exist" in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_file_that_cannot_be_read_exits_66_and_the_others_are_still_spooled(workdir: Path) -> None:
    (workdir / "good.eml").write_bytes(mail())
    result = run_process(workdir, "ingest", str(workdir / "missing.eml"), str(workdir / "good.eml"))
    assert result.returncode == 66 and b"missing.eml: cannot read: No such file or directory" in result.stderr
    assert spooled(workdir / "data").count() == 1


@pytest.mark.parametrize("args", [("ingest", "-"), ("--help",), ("--version",)], ids=" ".join)
def test_the_pipe_help_and_version_import_no_heavy_package(workdir: Path, args: tuple[str, ...]) -> None:
    result = run_process(workdir, *args, stdin=mail(), python=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    timings = re.finditer(r"^import time:.*\|\s*(\S+)$", result.stderr.decode(), re.M)
    imported = {m[1].split(".")[0] for m in timings}
    assert "mailgate" in imported  # the measurement itself worked
    assert not imported & HEAVY_PACKAGES
    if args[0] == "ingest":  # click's import alone costs the pipe more than its durable write
        assert "click" not in imported


# -- the pipe, in-process ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        ('data_dir = "var"\n', {}, "etc/var"),
        ("", {}, "etc/data"),
        ('data_dir = "var"\n', {"MAILGATE_DATA_DIR": "elsewhere"}, "etc/elsewhere"),
    ],
    ids=["the file's data_dir", "the default", "MAILGATE_DATA_DIR"],
)
def test_the_pipe_writes_into_the_spool_the_daemon_reads(
    here: Path, monkeypatch: pytest.MonkeyPatch, config: str, env: dict[str, str], expected: str
) -> None:
    (here / "etc").mkdir()
    (here / "etc" / "mailgate.toml").write_text(config + CONFIG)
    for name, value in {**env, "MAILGATE_CONFIG": str(here / "etc" / "mailgate.toml")}.items():
        monkeypatch.setenv(name, value)
    (here / "elsewhere").mkdir()
    monkeypatch.chdir(here / "elsewhere")  # an MTA starts the pipe anywhere
    result = run("ingest", "-", stdin=mail())
    assert result.exit_code == 0, result.output
    daemon_data_dir = load_settings().data_dir
    assert daemon_data_dir == here / expected
    assert spooled(daemon_data_dir).count() == 1


def test_spool_list_shows_what_waits_and_why(workdir: Path) -> None:
    from mailgate.spool import Envelope

    assert run("spool", "list").output.strip() == "spool is empty"
    spool = spooled(workdir / "data")
    at = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    spool.put(mail(), Envelope("smtp", "dana@example.com", ("support@example.com",), at))
    spool.put(mail(), Envelope("smtp", "erin@example.com", ("support@example.com",), at))
    (_, failing) = spool.due(datetime.now(UTC))
    taken = spool.claim(failing)
    assert taken is not None
    spool.retry(taken.name, "OperationalError: disk I/O error", datetime.now(UTC))
    lines = run("spool", "list").output.splitlines()
    assert len(lines) == 2
    assert "<dana@example.com> -> support@example.com" in lines[0] and "attempts" not in lines[0]
    assert "<erin@example.com>" in lines[1] and "attempts 1" in lines[1] and "disk I/O error" in lines[1]


# -- ingest --now and the admin's commands, in-process -------------------------------------------


def test_ingest_now_then_show_the_ticket(workdir: Path) -> None:
    raw = mail(body="The printer jams.\n")
    first = run("ingest", "--now", "-", stdin=raw)
    assert first.exit_code == 0 and first.stdout.strip() == "-: new_ticket HD #1"
    again = run("ingest", "--now", "-", stdin=raw)
    assert again.exit_code == 0 and "duplicate HD #1" in again.stdout

    listing = run("tickets", "list", "--status", "new").stdout
    assert "HD #1" in listing and "dana@example.com" in listing
    text = run("tickets", "show", "1").stdout
    assert "The printer jams." in text and "(ack, outbox: queued)" in text and "(dispatcher_new" in text
    missing = run("tickets", "show", "99")
    assert missing.exit_code == 1 and "no ticket #99" in missing.stderr


def test_mail_without_a_ticket_can_be_found_with_its_reasons(workdir: Path) -> None:
    run("ingest", "--now", "-", stdin=mail(subject="Automatic reply: away", headers={"Auto-Submitted": "auto-replied"}))
    listing = run("messages", "list", "--no-ticket").stdout
    assert "auto" in listing and "Automatic reply: away" in listing
    detail = run("messages", "show", "1").stdout
    assert "classify: Auto-Submitted: auto-replied" in detail and "ticket -" in detail


def test_ingest_now_exits_75_when_the_database_is_unreachable(workdir: Path) -> None:
    down = {"MAILGATE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2"}
    result = run("ingest", "--now", "-", stdin=mail(), env=down)
    assert result.exit_code == 75, result.output
    assert "Traceback" not in result.stderr and "temporary failure" in result.stderr


def test_ingest_now_exits_75_when_it_cannot_start(here: Path) -> None:
    (here / "afile").write_text("not a folder")
    result = run("ingest", "--now", "-", stdin=mail(), env={"MAILGATE_DATA_DIR": str(here / "afile")})
    assert result.exit_code == 75 and "mail left with the MTA" in result.stderr


def test_help_lists_every_command_with_its_short_help() -> None:
    listing = run("--help").stdout
    for name in COMMANDS:
        assert re.search(rf"^  {re.escape(name)} +\S", listing, re.M), f"{name} is not listed with its help"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_explains_itself(name: str) -> None:
    result = run(name, "--help")
    # argparse (ingest) writes "usage:", click "Usage:".
    assert result.exit_code == 0, result.output
    assert result.stdout.lower().startswith("usage: ") and f" {name} " in result.stdout.splitlines()[0]


def test_every_command_subcommand_and_option_has_help_text() -> None:
    import importlib

    import click

    from mailgate.cli.root import COMMANDS as LOADED

    missing = []

    def walk(command: click.Command, path: str) -> None:
        if not (command.help or command.short_help):
            missing.append(path)
        missing.extend(f"{path} {p.opts[0]}" for p in command.params if isinstance(p, click.Option) and not p.help)
        for sub in getattr(command, "commands", {}).values():
            walk(sub, f"{path} {sub.name}")

    for name, target in LOADED.items():
        module, attribute = target.rsplit(".", 1)
        walk(getattr(importlib.import_module(module), attribute), name)
    assert missing == []


def test_version_is_the_installed_package_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"mailgate {version('mailgate')}"


def test_import_refuses_what_is_not_a_mailbox(workdir: Path) -> None:
    (workdir / "notes.txt").write_text("hello\n")
    result = run("import", "mbox", str(workdir / "notes.txt"))
    assert result.exit_code == 65 and "holds no mail as mbox" in result.stderr
    result = run("import", "maildir", str(workdir))
    assert result.exit_code == 65 and "not a Maildir" in result.stderr


def test_check_config_says_per_item_what_is_wrong(workdir: Path) -> None:
    from tests.smtp_peers import free_port, relay

    ok = run("check-config")
    assert ok.exit_code == 0 and ok.stdout.splitlines()[0] == "OK   database"
    relay_at = {"MAILGATE_OUTGOING__RELAY_HOST": "127.0.0.1", "MAILGATE_OUTGOING__RELAY_PORT": str(free_port())}
    down = run("check-config", env=relay_at)
    assert down.exit_code == 1 and "FAIL relay 127.0.0.1:" in down.stdout and "Connection refused" in down.stdout
    with relay() as (_, port):
        up = run("check-config", env={**relay_at, "MAILGATE_OUTGOING__RELAY_PORT": str(port)})
    assert up.exit_code == 0 and f"OK   relay 127.0.0.1:{port}" in up.stdout


def test_a_database_without_schema_is_explained_until_db_upgrade(here: Path) -> None:
    env = {"MAILGATE_DATA_DIR": str(here / "empty")}
    result = run("tickets", "list", env=env)
    assert result.exit_code == 78
    assert "run `mailgate db upgrade`" in result.stderr and "Traceback" not in result.output
    upgraded = run("db", "upgrade", env=env)
    assert upgraded.exit_code == 0 and "created the database schema at revision" in upgraded.stdout
    again = run("db", "upgrade", env=env)
    assert "already at the newest revision" in again.stdout and "nothing to do" in again.stdout
    assert run("tickets", "list", env=env).stdout.strip() == "no tickets"


def test_ingest_and_import_before_db_upgrade_say_to_run_it_once(here: Path) -> None:
    env = {"MAILGATE_DATA_DIR": str(here / "empty")}
    box = mailbox.mbox(here / "old.mbox")
    for n in range(5):
        box.add(mail(subject=f"old {n}"))
    box.close()
    imported = run("import", "mbox", str(here / "old.mbox"), env=env)
    assert imported.exit_code == 78, imported.output
    assert imported.stderr.count("run `mailgate db upgrade`") == 1 and "temporary failure" not in imported.stderr
    piped = run("ingest", "--now", "-", stdin=mail(), env=env)
    # 75 still: the MTA keeps the mail until the admin has made the schema.
    assert piped.exit_code == 75 and "run `mailgate db upgrade`" in piped.stderr


def test_a_bad_config_is_one_line_per_key(here: Path) -> None:
    (here / "mailgate.toml").write_text("[limits]\nacks_per_sender = -1\n")
    result = run("tickets", "list")
    assert result.exit_code == 78 and "limits.acks_per_sender = -1" in result.stderr


def test_unparseable_input_is_quarantined_shown_and_retried(workdir: Path) -> None:
    garbage = b"this is not a mail at all\n"
    result = run("ingest", "--now", "-", stdin=garbage)
    assert result.exit_code == 0 and "quarantined" in result.stdout
    assert "no header section" in run("quarantine", "list").stdout
    shown = run("quarantine", "show", "1")
    assert "reason: no header section" in shown.stdout and "this is not a mail at all" in shown.stdout
    assert run("quarantine", "show", "1", "--raw").stdout_bytes == garbage  # to a pipe: the exact bytes
    retry = run("quarantine", "retry", "1")
    assert retry.exit_code == 65 and "still unparseable" in retry.stderr
    assert run("quarantine", "list").stdout.count("\n") == 2  # the header and one row: no second row


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
    result = run("import", "mbox", str(workdir / "old.mbox"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "5 mails: 1 new tickets, 1 replies, 1 duplicates, 1 auto-generated, 0 bounces, 1 quarantined, "
        "0 failed (not stored)",
        "imported as history: dated by when written, no acknowledgements, no notices",
    ]


def test_import_maildir(workdir: Path) -> None:
    box = mailbox.Maildir(workdir / "Maildir", create=True)
    for i in range(3):
        box.add(mail(subject=f"problem {i}", sender=f"user{i}@example.com"))
    result = run("import", "maildir", str(workdir / "Maildir"))
    assert "3 mails: 3 new tickets" in result.stdout


def test_outbox_flush_delivers_to_the_local_maildir(workdir: Path) -> None:
    run("ingest", "--now", "-", stdin=mail())
    result = run("outbox", "flush")
    assert result.exit_code == 0 and "sent 2" in result.stdout
    delivered = list(mailbox.Maildir(workdir / "data" / "outgoing", create=False))
    subjects = sorted(str(make_header(decode_header(m["Subject"]))) for m in delivered)
    assert subjects[0] == "[HD #1] New: Printer on 3rd floor jams — Dana Smith"
    assert subjects[1] == "[HD #1] Printer on 3rd floor jams"
    assert "sent 0" in run("outbox", "flush").stdout  # nothing is delivered twice


def test_an_envelope_sender_that_is_not_an_address_is_dropped_and_the_mail_kept(workdir: Path) -> None:
    """What the listener refuses with 553 (a line break, bytes that are not UTF-8) cannot reach
    a person's address through the pipe: the mail is kept, its sender read from its From."""
    raw = mail(sender="Dana Smith <dana@example.com>")
    result = run_process(workdir, "ingest", "--sender", "evil@example.com\r\nBcc: victim@example.org", stdin=raw)
    assert result.returncode == 0, result.stderr
    assert b"ignoring an envelope sender that is not an address" in result.stderr
    (entry,) = spooled(workdir / "data").due(datetime.now(UTC))
    taken = spooled(workdir / "data").claim(entry)
    assert taken is not None and taken.envelope.sender is None and taken.raw == raw


# A terminal obeys what it is sent: ESC c resets it, ESC ] rewrites its title, CSI (ESC [ or
# the single C1 byte U+009B) moves the cursor and recolours. Mail content may carry any of them.
_HOSTILE = (
    b"From: =?utf-8?q?Dana=1Bc_Smith=C2=9B2J?= <dana@example.com>\r\n"
    b"To: support@example.com\r\n"
    b"Subject: =?utf-8?q?Printer=1B]0;owned=07_jams=C2=85?=\r\n"
    b"Message-ID: <hostile@client.example.org>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"The printer\x1bc jams\xc2\x9b31m.\r\n\tIndented line.\r\n"
    b'--B\r\nContent-Type: application/pdf\x1b[2J\xc2\x9d; name="scan.pdf"\r\n'
    b'Content-Disposition: attachment; filename="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    b"JVBERi0xLjQK\r\n--B--\r\n"
)
_TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def test_mail_content_reaches_the_terminal_without_control_characters(workdir: Path) -> None:
    assert run("ingest", "--now", "-", stdin=_HOSTILE).exit_code == 0
    for command in (("tickets", "list"), ("tickets", "show", "1"), ("messages", "list"), ("messages", "show", "1")):
        out = run(*command).stdout
        assert not _TERMINAL_CONTROL.search(out), (command, out)
        assert "Printer" in out and "jams" in out, (command, out)  # what is readable stays
    shown = run("tickets", "show", "1").stdout
    assert "Dana" in shown and "application/pdf" in shown and "\tIndented line." in shown


def test_a_mail_without_from_and_an_envelope_sender_of_non_utf8_bytes_is_kept_not_retried(workdir: Path) -> None:
    """`mailgate ingest --now --sender $'x\\xff@y'` of a mail without From: every run ends (exit 0)
    with the mail kept, never 75 ("try again") for the MTA to repeat forever."""
    raw = b"To: support@example.com\r\nSubject: scan from the copier\r\nMessage-ID: <scan-1@copier>\r\n\r\nscan\r\n"
    sender = os.fsdecode(b"x\xff@y")  # the byte reaches the process as it is
    for _ in range(2):
        result = run_process(workdir, "ingest", "--now", "--sender", sender, "-", stdin=raw)
        assert result.returncode == 0, result.stderr
    listing = run("quarantine", "list").stdout + run("tickets", "list").stdout
    assert "scan from the copier" in listing or "no sender address" in listing
