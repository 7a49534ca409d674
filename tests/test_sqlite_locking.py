"""SQLite with many processes: a reader never holds up a writer, and a writer that cannot get
the lock in time says "try again later" (exit 75) instead of waiting forever."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailgate import people, tickets
from mailgate.app import App
from mailgate.config import load_settings
from tests.daemon_harness import wait_for
from tests.mails import mail

TICKETS = 1500  # enough lines that `tickets list` fills a pipe many times over


def _mailgate(config: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    command = [sys.executable, "-m", "mailgate", "--config", str(config), *args]
    return subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=60)


@pytest.fixture
def config(tmp_path: Path, sqlite_template: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(sqlite_template, data / "mailgate.db")
    path = tmp_path / "mailgate.toml"
    # Our own domain: an internal desk, whose many employees the breaker does not take for one
    # robot (see test_loops.py).
    path.write_text(
        f'data_dir = "{data}"\nsecret = "locking-test-secret-0123"\n[addresses]\nsupport = "support@example.com"\n'
    )
    return path


def _blocked_on_its_pipe(pid: int) -> bool:
    # "pipe_write", or "anon_pipe_write" on newer kernels: asleep writing into a full pipe.
    return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()


def test_a_reader_stuck_on_a_full_pipe_never_holds_up_a_writer(config: Path) -> None:
    app = App.build(load_settings(config))
    try:
        # Made by their owners' functions in one transaction: what is read is what matters here,
        # and 1,500 whole ingests cost the suite 20 s of CPU.
        with app.sessions.begin() as session:
            now = app.clock.now()
            for i in range(TICKETS):
                requester = people.find_or_create_person(session, f"user{i}@example.com", "", now)
                tickets.create_ticket(
                    session,
                    subject=f"ticket {i}",
                    requester=requester,
                    priority="normal",
                    channel="test",
                    now=now,
                    first_response_due=None,
                )
    finally:
        app.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    # `mailgate tickets list | less`, and nobody scrolls: its output fills the pipe mid-listing.
    reader = subprocess.Popen(
        [sys.executable, "-m", "mailgate", "--config", str(config), "tickets", "list"],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        wait_for(lambda: _blocked_on_its_pipe(reader.pid), timeout=30, interval=0.05)
        for how in (["ingest", "--now", "-"], ["ingest", "-"]):
            started = time.monotonic()
            done = _mailgate(config, *how, stdin=mail(subject=f"while someone reads: {how}"))
            elapsed = time.monotonic() - started
            assert done.returncode == 0, done.stderr
            assert elapsed < 6, f"{how} took {elapsed:.1f} s beside a stuck reader"
        assert reader.poll() is None and _blocked_on_its_pipe(reader.pid)  # it really was still reading
    finally:
        reader.kill()
        reader.communicate()


def test_a_writer_that_cannot_get_the_lock_in_time_exits_75(config: Path) -> None:
    """A long write elsewhere (a backup tool, a migration) holds SQLite's one write lock: the
    MTA is told to try again later, within seconds, and nothing is stored twice."""
    holder = sqlite3.connect(config.parent / "data" / "mailgate.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        done = _mailgate(config, "ingest", "--now", "-", stdin=mail(message_id="<locked@client.example.org>"))
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert done.returncode == 75, done.stderr
    assert b"temporary failure" in done.stderr and b"locked" in done.stderr
    assert elapsed < 15
    again = _mailgate(config, "ingest", "--now", "-", stdin=mail(message_id="<locked@client.example.org>"))
    assert again.returncode == 0 and b"new_ticket" in again.stdout
