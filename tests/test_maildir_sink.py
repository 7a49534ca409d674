"""The outgoing Maildir (no relay configured): a mail the outbox records as sent is on stable
storage, and what a crash left half-written in tmp/ does not stay there for ever."""

from __future__ import annotations

import mailbox
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mailgate.outgoing.sender import MaildirSink
from tests.mails import mail
from tests.test_durability import _calls, _config, _durability, _env, _strace, pytestmark  # noqa: F401


def test_flush_records_mail_as_sent_only_after_it_and_its_name_are_synced(
    tmp_path: Path, sqlite_template: Path
) -> None:
    config, trace = _config(tmp_path), tmp_path / "trace"
    (tmp_path / "data").mkdir()
    shutil.copy(sqlite_template, tmp_path / "data" / "mailgate.db")
    base = [sys.executable, "-m", "mailgate", "--config", str(config)]
    queued = subprocess.run([*base, "ingest", "--now", "-"], input=mail(), capture_output=True, env=_env(), timeout=60)
    assert queued.returncode == 0, queued.stderr
    flushed = subprocess.run(
        [*_strace(trace, "fsync,fdatasync,rename,renameat,renameat2"), *base, "outbox", "flush"],
        capture_output=True,
        env=_env(),
        timeout=60,
    )
    assert flushed.returncode == 0 and b"sent 2" in flushed.stdout, flushed.stdout + flushed.stderr
    delivered = _durability(_calls(trace), tmp_path / "data" / "outgoing")
    assert len(delivered) == 2
    for file_synced, renamed, folder_synced in delivered.values():
        assert 0 <= file_synced < renamed < folder_synced


def test_parts_a_crash_left_in_tmp_are_removed_and_delivery_goes_on(tmp_path: Path) -> None:
    sink_dir = tmp_path / "outgoing"
    for folder in ("tmp", "new", "cur"):
        (sink_dir / folder).mkdir(parents=True)
    crashed = sink_dir / "tmp" / "1700000000.4242_0.host"
    crashed.write_bytes(b"From: IT Help Desk <support@example.com>\r\nSubject: half a mail")
    two_days_ago = time.time() - 2 * 86400
    os.utime(crashed, (two_days_ago, two_days_ago))
    writing_now = sink_dir / "tmp" / "1700000001.4343_0.host"  # another writer, still at work
    writing_now.write_bytes(b"From: x")

    MaildirSink(sink_dir).deliver("support@example.com", ["dana@example.com"], mail(subject="Your ticket"))

    assert not crashed.exists() and writing_now.exists()
    assert [str(m["Subject"]) for m in mailbox.Maildir(sink_dir, create=False)] == ["Your ticket"]
