"""One mail must not stall the desk: each of the heavy mails (tests/heavy_mails.py) is ingested
in under 15 s and 4x its size + 200 MB of memory, no outgoing mail is over 200 KB, the raw mail
is kept whole and the trace says what was cut. Measured in a child process (its own peak RSS);
bench/bounds.py prints the same figures."""

from __future__ import annotations

import email.header
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from mailgate.app import App
from mailgate.cli.root import cli
from mailgate.config import load_settings
from mailgate.config_file import ConfigError
from mailgate.ingest.encoded_words import split_words
from mailgate.ingest.pipeline import ingest
from mailgate.ingest.text import decode_words
from mailgate.models import Outbox
from mailgate.outgoing.compose import render
from tests.conftest import REPO, make_settings
from tests.heavy_mails import HEAVY, many_files
from tests.mails import mail

SECONDS = 15
OUTGOING_BYTES = 200 * 1024


def ingest_in_child(db_url: str, tmp_path: Path, raw: bytes) -> dict:
    path = tmp_path / "heavy.eml"
    path.write_bytes(raw)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.ingest_child", db_url, str(tmp_path / "data"), str(path)]
    try:
        # The child's start and its rendering of the outgoing mail come on top of the ingest.
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=SECONDS + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ingest of a {len(raw)}-byte mail did not end within {SECONDS + 30} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


# tests/test_threading_rules.py times the mail copying 60,000 people (bench/bounds.py has it too).
# Every mail on SQLite; on PostgreSQL the largest, whose bytes its driver copies too (the
# figures for all are in bench/bounds.py --postgres).
CASES = [pytest.param(name, "sqlite") for name in HEAVY if "Cc" not in name] + [
    pytest.param(name, "postgresql", marks=pytest.mark.postgres)
    for name in ("45 MB of plain text", "34 MB file (46 MB in base64)")
]


@pytest.mark.parametrize(("name", "db_url"), CASES, indirect=["db_url"])
def test_a_heavy_mail_is_ingested_in_bounded_time_and_memory(db_url: str, tmp_path: Path, name: str) -> None:
    make, bound = HEAVY[name]
    raw = make()
    defaults = make_settings(tmp_path, db_url)
    assert len(raw) < defaults.limits.max_message_bytes
    got = ingest_in_child(db_url, tmp_path, raw)
    assert got["outcome"] == "new_ticket" and got["raw_kept"], got
    assert got["seconds"] < SECONDS, f"{name}: {got['seconds']:.1f} s"
    assert got["peak_rss"] < 4 * len(raw) + 200 * 2**20, f"{name}: peak RSS {got['peak_rss'] / 2**20:.0f} MB"
    assert set(got["outgoing_bytes"]) == {"ack", "dispatcher_new"}
    assert max(got["outgoing_bytes"].values()) <= OUTGOING_BYTES, got["outgoing_bytes"]
    assert got["stored_subject"] <= defaults.parsing.max_subject_chars
    assert got["ticket_subject"] <= defaults.parsing.max_subject_chars
    # The trace says what was left out of the parsed mail, and by which bound.
    assert any(line.startswith("parse:") and bound in line for line in got["trace"]) or bound is None, got["trace"]


def test_a_mail_of_many_files_gets_a_notice_naming_the_first_and_counting_the_rest(tmp_path: Path, db_url: str) -> None:
    # Every file over the attachment limit is listed in the acknowledgement and the notice.
    settings = make_settings(tmp_path, db_url, limits={"max_attachment_bytes": 0})
    app = App.build(settings)
    try:
        assert ingest(app, many_files(300, 2000), "smtp").outcome == "new_ticket"
        with app.sessions() as session:
            rows = {r.kind: r for r in session.scalars(select(Outbox))}
    finally:
        app.close()
    for row in rows.values():
        assert "0000-report" in row.body and "0049-report" in row.body and "0050-report" not in row.body
        assert "and 250 more" in row.body
    assert "#assign" in rows["dispatcher_new"].body  # it still ends with what to do


def test_no_outgoing_mail_is_over_the_size_bound_whatever_it_lists(tmp_path: Path, db_url: str) -> None:
    """What mail quotes is bounded where it is chosen (file names at 255 bytes, excerpts), but a
    site's template can repeat anything: the size bound holds whatever a template renders."""
    site = tmp_path / "site"
    for occasion in ("ack", "dispatcher_new"):
        (site / occasion).mkdir(parents=True)
        (site / occasion / "body.txt").write_text(
            "{% for i in range(10000) %}{{ ticket.subject }} {{ i }} — a line of a long list\n{% endfor %}"
        )
    settings = make_settings(tmp_path, db_url, templates_path=site, limits={"max_attachment_bytes": 0})
    app = App.build(settings)
    try:
        assert ingest(app, many_files(60, 30_000), "smtp").outcome == "new_ticket"
        with app.sessions() as session:
            rows = list(session.scalars(select(Outbox)))
            assert {r.kind for r in rows} == {"ack", "dispatcher_new"}
            for row in rows:
                assert len(render(row)) <= OUTGOING_BYTES, row.kind
                assert "Reports 0 " in row.body and "cut" in row.body.splitlines()[-1]
    finally:
        app.close()


def test_the_subject_of_outgoing_mail_is_cut_but_keeps_the_tag(app: App) -> None:
    result = ingest(app, mail(subject="printer " * 400), "smtp")
    with app.sessions() as session:
        for row in session.scalars(select(Outbox)):
            subject = row.headers["Subject"]
            assert len(subject) <= app.settings.outgoing.max_subject_chars + 20
            assert f"#{result.ticket_number}]" in subject and subject.endswith("…")


def test_a_reply_quoting_a_long_thread_still_threads_by_its_newest_references(app: App) -> None:
    first = ingest(app, mail(message_id="<start@client.example.org>"), "smtp")
    old = " ".join(f"<old-{i}@lists.example.org>" for i in range(3000))  # ~80 KB, the oldest first
    reply = mail(
        subject="Re: Printer",
        message_id="<reply@client.example.org>",
        headers={"References": f"{old} <start@client.example.org>"},
    )
    result = ingest(app, reply, "smtp")
    assert (result.outcome, result.ticket_number) == ("reply", first.ticket_number)


@pytest.mark.parametrize(
    "value",
    [
        "=?utf-8?q?Dr=C3=BCcker_kaputt?=",
        "Re: =?iso-8859-1?q?Gr=FC=DFe?= aus =?utf-8?b?S8O2bG4=?=",
        "=?utf-8?q?=C3?= =?utf-8?q?=BC?= ber",  # one character split across two words
        "=?UTF-8?B?w6Q?=",  # base64 without its padding
        "a =?iso-8859-1?q?=E4?=  =?utf-8?q?=C3=A4?= b",
        "plain text only",
        "=?iso-8859-1?q?Fr\xf6sche?=",  # an 8-bit byte inside the word, read as Latin-1 before
    ],
)
def test_encoded_words_decode_as_the_stdlib_decodes_them(value: str) -> None:
    stdlib = "".join(
        c if isinstance(c, str) else c.decode(cs or "ascii") for c, cs in email.header.decode_header(value)
    )
    assert decode_words(value) == " ".join(stdlib.split())


def test_a_word_that_does_not_decode_is_kept_as_written() -> None:
    assert split_words("=?utf-8?b?a?= x") == [("=?utf-8?b?a?=", None), (" x", None)]


def test_a_bad_parsing_bound_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text("[parsing]\nmax_mime_parts = 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "parsing.max_mime_parts" in str(info.value) and "0" in str(info.value)


def test_messages_show_says_what_a_bound_cut(
    tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [n for n in os.environ if n.startswith("MAILGATE_")]:
        monkeypatch.delenv(variable)
    (tmp_path / "data").mkdir()
    shutil.copy(sqlite_template, tmp_path / "data" / "mailgate.db")
    config = tmp_path / "mailgate.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nsecret = "cli-test-secret-0123"\n'
        '[addresses]\nsupport = "support@example.com"\ndispatcher = "dispatch@example.com"\n'
        "[parsing]\nmax_mime_parts = 3\n"
    )
    files = [(f"f{i}.txt", "application/octet-stream", b"x") for i in range(5)]
    runner = CliRunner()
    ingested = runner.invoke(cli, ["--config", str(config), "ingest", "--now", "-"], input=mail(attachments=files))
    assert ingested.exit_code == 0 and "new_ticket" in ingested.stdout, ingested.output
    shown = runner.invoke(cli, ["--config", str(config), "messages", "show", "1"]).stdout
    assert "parse:" in shown and "parsing.max_mime_parts" in shown
    ticket = runner.invoke(cli, ["--config", str(config), "tickets", "show", "1"]).stdout
    assert "f0.txt" in ticket and "f4.txt" not in ticket  # only the parts read
