"""`mailgate run` as a real process: SIGTERM and kill -9 in the middle of a burst of SMTP
deliveries, a mail that kills the process, a second daemon, the MTA pipe waking the daemon."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.config import load_settings
from mailgate.db import upgrade
from mailgate.ingest.spooled import SpoolWorker, drain
from mailgate.models import Message, Quarantine, Ticket
from mailgate.spool import Envelope, Spool
from tests.daemon_harness import count_rows, running_daemon, wait_for, wait_listening
from tests.mails import mail
from tests.smtp_peers import free_port, silent_relay

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}


def _write_config(tmp_path: Path, port: int, more_config: str = "") -> Path:
    db = tmp_path / "mailgate.db"
    config = tmp_path / "mailgate.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\ndatabase_url = "sqlite:///{db}"\nsecret = "daemon-test-secret"\n'
        f'[addresses]\nsupport = "support@example.com"\n[smtp]\nhost = "127.0.0.1"\nport = {port}\n' + more_config
    )
    if not db.exists():
        upgrade(f"sqlite:///{db}")
    return config


def _start_daemon(
    tmp_path: Path, stderr: object, more_config: str = "", port: int | None = None, command: list[str] | None = None
) -> tuple[subprocess.Popen, int]:
    """`mailgate run` on a SQLite database of its own, listening on a port picked here, in a
    process group of its own (so a test can kill the whole daemon, listener and all)."""
    port = port or free_port()
    config = _write_config(tmp_path, port, more_config)
    command = command or [sys.executable, "-m", "mailgate"]
    process = subprocess.Popen(
        [*command, "--config", str(config), "run"], stderr=stderr, env=_env(), start_new_session=True, cwd=REPO
    )
    return process, port


def _relay_at(port: int) -> str:
    return f'[outgoing]\nrelay_host = "127.0.0.1"\nrelay_port = {port}\n'


def _sigterm(process: subprocess.Popen, timeout: float = 30) -> tuple[int, float]:
    """SIGTERM, as systemd sends it; the exit code and how long the daemon took to exit."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=timeout)
    return code, time.monotonic() - started


def _on_database(config: Path, url: str) -> None:
    """The daemon of `config` (see _write_config) on the database at `url` instead of SQLite."""
    config.write_text(re.sub(r'database_url = "[^"]*"', f'database_url = "{url}"', config.read_text()))


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _settings_app(tmp_path: Path) -> App:
    return App.build(load_settings(tmp_path / "mailgate.toml"))


def test_sigterm_during_a_burst_keeps_every_accepted_mail_and_exits_0(tmp_path: Path) -> None:
    log = (tmp_path / "daemon.log").open("wb")  # a file, not a pipe: a full pipe would stall the daemon
    process, port = _start_daemon(tmp_path, log)
    accepted: list[str] = []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def client(worker: int) -> None:
        for i in range(1000):
            if stop_sending.is_set():
                return
            message_id = f"burst-{worker}-{i}@client.example.org"
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
                    smtp.sendmail(
                        "user@example.com",
                        ["support@example.com"],
                        mail(sender=f"user{worker}@example.com", subject=f"burst {i}", message_id=f"<{message_id}>"),
                    )
            except (OSError, smtplib.SMTPException):
                continue  # refused or cut off: not accepted, the client would retry later
            with lock:
                accepted.append(message_id)

    try:
        wait_listening(port, process)
        threads = [threading.Thread(target=client, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        wait_for(lambda: len(accepted) >= 40, timeout=30, interval=0.01)
        code, elapsed = _sigterm(process, timeout=15)
    finally:
        stop_sending.set()
        _stop(process)
        log.close()
    for t in threads:
        t.join(30)
    output = (tmp_path / "daemon.log").read_text()
    assert code == 0, output
    assert "stopping: no new connections" in output and "INFO mailgate.daemon: stopped" in output
    assert "did not stop" not in output  # the listener stopped when told, not killed
    assert elapsed < 10
    # What the daemon had no time to ingest is in the spool; the next start takes it.
    app = _settings_app(tmp_path)
    spool = Spool(app.settings.spool_dir)
    try:
        while drain(app, spool).stored:
            pass
        assert spool.count() == 0
        with app.sessions() as session:
            stored = set(session.scalars(select(Message.message_id)))
    finally:
        app.close()
    missing = [m for m in accepted if m not in stored]
    assert missing == [], f"{len(missing)} mails got 250 but are not stored"


def test_kill_9_of_the_whole_daemon_mid_flood_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    """300 mails from 4 clients; the whole daemon is killed (listener and all) part way. Clients
    retry what got no 250, as MTAs do; after the restart every mail is one ticket within 60 s."""
    log = (tmp_path / "daemon.log").open("wb")
    process, port = _start_daemon(tmp_path, log)
    accepted: set[str] = set()
    lock = threading.Lock()
    give_up = threading.Event()

    def client(worker: int) -> None:
        for i in range(75):
            message_id = f"flood-{worker}-{i}@client.example.org"
            # A sender each: a flood from one would be held by the circuit breaker (test_loops.py).
            sender = f"user{worker}-{i}@example.com"
            raw = mail(sender=sender, subject=f"flood {i}", message_id=f"<{message_id}>")
            while not give_up.is_set():
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
                        smtp.sendmail(sender, ["support@example.com"], raw)
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.05)  # an MTA's retry, sooner
                    continue
                with lock:
                    accepted.add(message_id)
                break

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    try:
        wait_listening(port, process)
        for t in threads:
            t.start()
        wait_for(lambda: len(accepted) >= 100, timeout=60, interval=0.005)
        os.killpg(process.pid, signal.SIGKILL)  # no goodbye: the listener, the worker, everything
        process.wait()
        restarted_at = time.monotonic()
        process, _ = _start_daemon(tmp_path, log, port=port)
        for t in threads:
            t.join(120)
        assert len(accepted) == 300
        app = _settings_app(tmp_path)
        try:
            wait_for(
                lambda: count_rows(app, Ticket) >= 300, timeout=60 - (time.monotonic() - restarted_at), interval=0.2
            )
            with app.sessions() as session:
                stored = list(session.scalars(select(Message.message_id)))
            assert count_rows(app, Ticket) == 300
        finally:
            app.close()
    finally:
        give_up.set()
        _stop(process)
        log.close()
    assert sorted(stored) == sorted(accepted)  # each once


def test_a_mail_whose_ingest_kills_the_process_reaches_quarantine_after_the_configured_attempts(
    tmp_path: Path,
) -> None:
    """The OOM killer, say, ends the daemon each time it ingests one mail. Each start counts that
    attempt; after spool.max_attempts the mail goes to quarantine and the rest flows again."""
    # A daemon whose ingest dies on one mail: the real `mailgate run` with ingest() wrapped.
    poisoned = (
        "import os, signal, sys\n"
        "import mailgate.ingest.spooled as worker\n"
        "real = worker.ingest\n"
        "def ingest(app, raw, *args, **kwargs):\n"
        "    if b'X-Test-Poison: yes' in raw:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(app, raw, *args, **kwargs)\n"
        "worker.ingest = ingest\n"
        "from mailgate.cli import main\n"
        "sys.argv[0] = 'mailgate'\n"
        "main()\n"
    )
    config = _write_config(tmp_path, free_port(), "[spool]\nmax_attempts = 3\n")
    spool = Spool(tmp_path / "data" / "spool")
    envelope = Envelope("pipe", "dana@example.com", ("support@example.com",), datetime.now(UTC))
    spool.put(mail(subject="poison", headers={"X-Test-Poison": "yes"}), envelope)
    spool.put(mail(subject="an ordinary mail"), envelope)
    deaths = 0
    log = (tmp_path / "daemon.log").open("wb")
    try:
        for _ in range(6):
            process, _port = _start_daemon(
                tmp_path, log, "[spool]\nmax_attempts = 3\n", command=[sys.executable, "-c", poisoned]
            )
            try:
                # It dies, or it lives: it quarantines the poison and works the spool empty.
                def settled(p: subprocess.Popen = process) -> bool:
                    return p.poll() is not None or _quarantined_and_drained(tmp_path, spool)

                wait_for(settled, timeout=60)
                code = process.poll()
            finally:
                _stop(process)
            if code is None:
                break
            assert code == -signal.SIGKILL
            deaths += 1
        else:
            raise AssertionError("the daemon kept dying: the mail was retried forever")
    finally:
        log.close()
    assert config.exists()
    assert deaths == 3
    app = _settings_app(tmp_path)
    try:
        with app.sessions() as session:
            row = session.scalars(select(Quarantine)).one()
            subjects = list(session.scalars(select(Ticket.subject)))
    finally:
        app.close()
    assert b"X-Test-Poison: yes" in row.raw
    assert "not stored after 3 attempts" in row.reason and "the process ended while ingesting it" in row.reason
    assert subjects == ["an ordinary mail"]


def _quarantined_and_drained(tmp_path: Path, spool: Spool) -> bool:
    return " quarantined: " in (tmp_path / "daemon.log").read_text() and spool.count() == 0


def test_a_second_daemon_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    log = (tmp_path / "daemon.log").open("wb")
    first, port = _start_daemon(tmp_path, log)
    try:
        wait_listening(port, first)
        second = subprocess.run(
            [sys.executable, "-m", "mailgate", "--config", str(tmp_path / "mailgate.toml"), "run"],
            capture_output=True,
            env={**_env(), "MAILGATE_SMTP__PORT": str(free_port())},
            timeout=30,
        )
    finally:
        _stop(first)
        log.close()
    assert second.returncode != 0
    assert f"another mailgate daemon (pid {first.pid}) works the spool" in second.stderr.decode()
    assert "Traceback" not in second.stderr.decode()


@pytest.mark.parametrize(
    ("revision", "locked"),
    [(None, False), ("0016", False), ("0016", True)],
    ids=["no schema", "an older schema", "an older schema, while a writer holds the lock"],
)
def test_a_database_without_this_releases_schema_stops_the_start_with_the_way_out(
    tmp_path: Path, revision: str | None, locked: bool
) -> None:
    """Before, the daemon ran on it: every part logged a traceback every round (no such table).
    The check only reads: a writer holding SQLite's lock (a `mailgate import`) does not make the
    start wait for it, nor skip the check."""
    db = tmp_path / "mailgate.db"
    if revision is None:
        db.touch()  # what SQLite leaves when something opened the file before any `db upgrade`
    else:
        upgrade(f"sqlite:///{db}", revision)
    port = free_port()
    config = _write_config(tmp_path, port)
    writer = sqlite3.connect(db, isolation_level=None)
    if locked:
        writer.execute("BEGIN IMMEDIATE")
    try:
        command = [sys.executable, "-m", "mailgate", "--config", str(config), "run"]
        # Were the check skipped (a writer's lock), the daemon would run on: this would time out.
        result = subprocess.run(command, capture_output=True, env=_env(), timeout=30)
    finally:
        writer.close()
    said = result.stderr.decode()
    assert result.returncode == 78, said  # EX_CONFIG: systemd's Restart= does not help, a person must
    assert "run `mailgate db upgrade`" in said and "Traceback" not in said, said
    if revision is not None:
        assert "at revision 0016, this release needs 0017" in said, said
    assert not (tmp_path / "data" / "spool").exists()  # nothing started


def test_a_file_that_is_no_database_stops_the_start_it_is_no_outage(tmp_path: Path) -> None:
    """Before, any database error counted as an outage: the daemon ran on a garbage file and
    every SLA scan logged a traceback."""
    (tmp_path / "mailgate.db").write_bytes(b"this is not an SQLite database, " * 64)
    config = _write_config(tmp_path, free_port())
    command = [sys.executable, "-m", "mailgate", "--config", str(config), "run"]
    result = subprocess.run(command, capture_output=True, env=_env(), timeout=30)
    said = result.stderr.decode()
    assert result.returncode == 78, said
    assert "the database cannot be read" in said and "not a database" in said and "Traceback" not in said, said


def _only_a_poke_brings_mail_in(monkeypatch: pytest.MonkeyPatch) -> Callable[[SpoolWorker], bool]:
    """Every spool worker's next look is an hour away. The function returned waits until a look
    of the given worker found nothing to do: from then on only a wake-up brings mail in within a
    test's wait, however slow a loaded machine makes the ingest itself. (Per worker: the worker
    of a daemon stopped before may still end a look late.)"""
    idle: dict[int, threading.Event] = defaultdict(threading.Event)
    look = SpoolWorker._round

    def watched(worker: SpoolWorker) -> tuple[bool, datetime | None]:
        busy, next_due = look(worker)
        if not busy:
            idle[id(worker)].set()
        return busy, next_due

    monkeypatch.setattr(SpoolWorker, "_round", watched)
    monkeypatch.setattr(SpoolWorker, "IDLE_SECONDS", 3600.0)
    return lambda worker: idle[id(worker)].wait(30)


def test_mail_from_the_mta_pipe_is_ingested_by_the_running_daemon_at_once(
    tmp_path: Path, db_url: str, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailgate ingest` only drops the mail into the spool; the daemon is woken and takes it
    at once, not at its next look."""
    from tests.conftest import make_settings

    went_idle = _only_a_poke_brings_mail_in(monkeypatch)
    settings = make_settings(tmp_path, db_url, smtp={"enabled": False})
    config = tmp_path / "pipe.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n')
    app = App.build(settings, clock=clock)
    with running_daemon(app) as running:
        assert went_idle(running.spool_worker), "the spool worker's first look did not end"
        dropped = subprocess.run(
            [sys.executable, "-m", "mailgate", "--config", str(config), "ingest", "--sender", "dana@example.com", "-"],
            input=mail(subject="from the pipe"),
            capture_output=True,
            env=_env(),
            timeout=30,
        )
        assert dropped.returncode == 0, dropped.stderr
        wait_for(lambda: count_rows(app, Ticket) == 1)
    app.close()


def test_the_daemon_polls_imap_and_the_ack_leaves_at_once(tmp_path: Path, db_url: str, clock) -> None:
    """A mail dropped into the IMAP mailbox becomes a ticket, and its acknowledgement reaches the
    Maildir sink, with every part running in one daemon."""
    from tests.conftest import make_settings
    from tests.daemon_harness import running_daemon, wait_for
    from tests.dovecot import running_dovecot

    with running_dovecot() as dovecot:
        # "At once": by IDLE. The next poll is an hour away, so nothing else brings the mail in
        # within the wait, however slow a loaded machine makes the rest.
        mailbox = dovecot.mailbox(poll_seconds=3600)
        settings = make_settings(tmp_path, db_url, smtp={"enabled": False}, imap=[mailbox.model_dump()])
        app = App.build(settings, clock=clock)
        with running_daemon(app) as running:
            assert running.listener is None and len(running.poller_threads) == 1
            # In IDLE first: had the mail come before, the poller's first look would have found it.
            wait_for(lambda: running.pollers[0].state == "idle")
            dovecot.append("INBOX", [mail(subject="Monitor flickers", message_id="<imap-1@client.example.org>")])
            sink = settings.outgoing_maildir / "new"
            wait_for(lambda: sink.is_dir() and len(list(sink.iterdir())) == 2)
        with app.sessions() as s:
            assert s.scalar(select(Message.source)) == "imap:support"
        app.close()
        assert dovecot.uids("INBOX") == []  # moved away after the commit


def test_imap_poll_reads_a_mailbox_once_from_the_command_line(tmp_path: Path) -> None:
    from tests.dovecot import running_dovecot

    with running_dovecot() as dovecot:
        box = dovecot.mailbox()
        (tmp_path / "mailgate.toml").write_text(
            f'data_dir = "{tmp_path / "data"}"\nsecret = "imap-poll-test-secret"\n'
            f'[[imap]]\nname = "support"\nhost = "127.0.0.1"\nport = {box.port}\nsecurity = "none"\n'
            f'user = "{box.user}"\npassword = "{box.password}"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
        command = [sys.executable, "-m", "mailgate", "--config", str(tmp_path / "mailgate.toml")]
        subprocess.run([*command, "db", "upgrade"], check=True, capture_output=True, env=env)
        dovecot.append("INBOX", [mail(subject=f"printer {i}") for i in range(3)])
        first = subprocess.run([*command, "imap", "poll"], capture_output=True, text=True, env=env)
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == "support: 3 new_ticket; 0 failed, 0 to the failure folder"
        again = subprocess.run([*command, "imap", "poll", "support"], capture_output=True, text=True, env=env)
        assert "support: no new mail" in again.stdout
        wrong = subprocess.run([*command, "imap", "poll", "sales"], capture_output=True, text=True, env=env)
        assert wrong.returncode == 1 and "no [[imap]] mailbox named sales" in wrong.stderr


def test_systemctl_stop_while_the_daemon_starts_is_a_stop_not_a_failure(tmp_path: Path) -> None:
    """`systemctl stop` sends SIGTERM to every process of the unit. The listener process, still
    importing, dies of it; before, the daemon then exited 1, saying the listener exited at start."""
    log = tmp_path / "daemon.log"
    with open(log, "wb") as stderr:
        process, _ = _start_daemon(tmp_path, stderr)
    try:
        wait_for(lambda: _listener_started(process.pid), interval=0.005)
        os.killpg(process.pid, signal.SIGTERM)  # the listener has just been started: it is importing
        code = process.wait(10)
    finally:
        _stop(process)
    said = log.read_text()
    assert code == 0, said
    assert "told to stop while the SMTP listener started" in said and "error" not in said, said


def _signal_the_listener(tmp_path: Path, signum: int) -> tuple[int, str, int]:
    """Start the daemon, send `signum` to its listener process alone; (exit code, stderr, port)."""
    process, port = _start_daemon(tmp_path, subprocess.PIPE)
    try:
        wait_listening(port, process)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        listener = [int(pid) for pid in children if "spawn_main" in _cmdline(int(pid))]
        assert len(listener) == 1, children
        os.kill(listener[0], signum)
        _, stderr = process.communicate(timeout=15)
    finally:
        _stop(process)
    return process.returncode, stderr.decode(), port


def test_the_daemon_stops_with_an_error_when_its_listener_process_dies(tmp_path: Path) -> None:
    """Never a daemon that looks alive but takes no mail: systemd's Restart=on-failure starts anew."""
    code, stderr, port = _signal_the_listener(tmp_path, signal.SIGKILL)
    assert code == 1
    assert "the SMTP listener process exited unexpectedly" in stderr
    with smtplib.SMTP() as client, pytest.raises(OSError):
        client.connect("127.0.0.1", port)  # nobody listens any more


def test_sigterm_while_the_relay_hangs_mid_delivery_still_exits_0_within_10_s(tmp_path: Path) -> None:
    """A relay that stopped answering holds the sender for its 30 s timeout: the daemon does not
    wait for it (what was not recorded as sent goes out again after the next start)."""
    log = (tmp_path / "daemon.log").open("wb")
    with silent_relay() as (connections, relay_port):
        process, port = _start_daemon(tmp_path, log, _relay_at(relay_port))
        try:
            wait_listening(port, process)
            with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
                client.sendmail("dana@example.com", ["support@example.com"], mail())
            wait_for(lambda: connections)  # the sender is stuck on the silent relay
            code, elapsed = _sigterm(process, timeout=30)
        finally:
            _stop(process)
            log.close()
    output = (tmp_path / "daemon.log").read_text()
    assert code == 0, output
    assert elapsed < 10, output
    assert "SMTP listener did not stop" not in output  # the listener was not in the way


def test_a_listener_told_to_stop_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    """`systemctl stop` signals every process of the unit; whichever handles it first, the
    daemon exits 0 (Restart=on-failure must not start it again)."""
    code, stderr, _ = _signal_the_listener(tmp_path, signal.SIGTERM)
    assert code == 0, stderr
    assert "the SMTP listener process was stopped" in stderr


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _listener_started(daemon: int) -> bool:
    """Whether the daemon has started its listener process (a child that may be gone at once)."""
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{daemon}/task/{daemon}/children").read_text().split()
        return any("spawn_main" in _cmdline(int(pid)) for pid in children)
    return False


def test_mail_a_killed_daemon_was_delivering_goes_out_at_its_restart_not_ten_minutes_later(tmp_path: Path) -> None:
    from tests.smtp_peers import relay

    log = (tmp_path / "daemon.log").open("wb")
    try:
        with silent_relay() as (connections, silent_port):
            process, port = _start_daemon(tmp_path, log, _relay_at(silent_port))
            try:
                wait_listening(port, process)
                with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
                    client.sendmail("dana@example.com", ["support@example.com"], mail(subject="claimed, then killed"))
                wait_for(lambda: connections)  # the sender claimed the mail and hangs on the relay
            finally:
                _stop(process)  # kill -9 of the whole daemon
        with relay() as (capturing, relay_port):
            process, _ = _start_daemon(tmp_path, log, _relay_at(relay_port), port=port)
            try:
                wait_for(lambda: len(capturing.received) >= 1, timeout=60)  # far from ten minutes
            finally:
                _stop(process)
    finally:
        log.close()
    assert (
        "outgoing mails a stopped daemon was delivering are due again at once" in (tmp_path / "daemon.log").read_text()
    )


def test_a_daemon_started_while_the_database_is_down_accepts_mail_and_spends_no_try_on_it(tmp_path: Path) -> None:
    """A restart during a database outage (the host rebooted, PostgreSQL is not up yet)."""
    log = (tmp_path / "daemon.log").open("wb")
    unreachable = "[spool]\nmax_attempts = 2\n"
    port = free_port()
    config = _write_config(tmp_path, port, unreachable)
    _on_database(config, "postgresql+psycopg://nobody@127.0.0.1:1/none")
    process = subprocess.Popen(
        [sys.executable, "-m", "mailgate", "--config", str(config), "run"],
        stderr=log,
        env=_env(),
        start_new_session=True,
    )
    try:
        wait_listening(port, process)
        for i in range(3):
            with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
                assert client.sendmail("dana@example.com", ["support@example.com"], mail(subject=f"n{i}")) == {}
        spool = Spool(tmp_path / "data" / "spool")
        # Tried, and given back: no try is spent on an outage (with max_attempts = 2 the mail
        # would otherwise soon go to a quarantine that is not there either).
        tries = "the database is unavailable (OperationalError"
        wait_for(lambda: (tmp_path / "daemon.log").read_text().count(tries) >= 3, timeout=20, interval=0.1)
        waiting = spool.waiting()
        assert len(waiting) == 3 and all(w.attempts == 0 for w in waiting if not w.claimed)
    finally:
        _stop(process)
        log.close()


def test_a_database_that_hangs_neither_keeps_mail_out_nor_the_daemon_from_stopping(tmp_path: Path) -> None:
    """The database host accepts connections and never answers (frozen, or a dead network path):
    the listener still starts and answers 250, and SIGTERM still ends the daemon in time."""
    log = (tmp_path / "daemon.log").open("wb")
    port = free_port()
    with silent_relay() as (_, hanging_port):  # accepts, never says a word
        config = _write_config(tmp_path, port)
        _on_database(config, f"postgresql+psycopg://nobody@127.0.0.1:{hanging_port}/none")
        command = [sys.executable, "-m", "mailgate", "--config", str(config), "run"]
        process = subprocess.Popen(command, stderr=log, env=_env(), start_new_session=True)
        try:
            wait_listening(port, process, timeout=15)
            with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
                assert client.sendmail("dana@example.com", ["support@example.com"], mail()) == {}
            code, elapsed = _sigterm(process, timeout=30)
        finally:
            _stop(process)
            log.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert elapsed < 10
    assert Spool(tmp_path / "data" / "spool").count() == 1  # kept for when the database answers


def test_a_daemon_started_again_in_the_same_process_is_woken_by_the_pipe(
    tmp_path: Path, db_url: str, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped daemon leaves its wake-up name free: the next one takes it and hears the pokes."""
    from tests.conftest import make_settings

    went_idle = _only_a_poke_brings_mail_in(monkeypatch)
    settings = make_settings(tmp_path, db_url, smtp={"enabled": False})
    app = App.build(settings, clock=clock)
    with running_daemon(app):
        pass
    with running_daemon(app) as running:
        assert running.wakeup_thread is not None, "the wake-up name was still taken"
        assert went_idle(running.spool_worker), "the spool worker's first look did not end"
        spool = Spool(settings.spool_dir)
        spool.put(mail(), Envelope("pipe", "dana@example.com", ("support@example.com",), datetime.now(UTC)))
        spool.wake_daemon()
        wait_for(lambda: count_rows(app, Ticket) == 1)


def test_a_squatted_wake_up_name_does_not_keep_the_daemon_from_running(
    tmp_path: Path, db_url: str, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone on the host can bind the daemon's wake-up name first: the daemon starts all the
    same and finds piped mail at its next look."""
    import socket as sockets

    from tests.conftest import make_settings

    monkeypatch.setattr(SpoolWorker, "IDLE_SECONDS", 1.0)  # the next look, soon
    settings = make_settings(tmp_path, db_url, smtp={"enabled": False})
    squatter = sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM)
    squatter.bind(Spool(settings.spool_dir).wakeup_address)
    app = App.build(settings, clock=clock)
    try:
        with running_daemon(app):
            Spool(settings.spool_dir).put(mail(), Envelope("pipe", None, (), datetime.now(UTC)))
            wait_for(lambda: count_rows(app, Ticket) == 1)
    finally:
        squatter.close()
        app.close()


@pytest.mark.parametrize(("level", "logged"), [("info", True), ("warning", False)])
def test_log_level_sets_what_the_daemon_logs(tmp_path: Path, level: str, logged: bool) -> None:
    log = tmp_path / "stderr.log"
    with open(log, "wb") as stderr:
        process, port = _start_daemon(tmp_path, stderr, f'[log]\nlevel = "{level}"\n')
    try:
        wait_listening(port, process)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("dana@example.com", ["support@example.com"], mail())
        app = _settings_app(tmp_path)
        try:
            wait_for(lambda: count_rows(app, Ticket) == 1)  # ingested: its line is logged by now
        finally:
            app.close()
    finally:
        code, _ = _sigterm(process)
    said = log.read_text()
    assert code == 0
    assert ("INFO mailgate.ingest: ingest source=smtp" in said) is logged, said[-500:]


def _background_niceness(
    tmp_path: Path, clock, value: int, set_yet: Callable[[list[int]], bool], daemon_niceness: int | None = None
) -> list[int]:
    """The niceness of the ingest and sender threads of a daemon run with `background_niceness =
    value`, itself run at `daemon_niceness` (None: the test's own), read once `set_yet` says the
    threads have set theirs (each does at its start)."""
    from tests.conftest import make_settings

    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'm.db'}", smtp={"enabled": False}, background_niceness=value
    )
    upgrade(settings.effective_database_url)
    app = App.build(settings, clock=clock)
    seen: list[int] = []
    failed: list[BaseException] = []

    def daemon() -> None:
        try:
            run_daemon()
        except BaseException as exc:  # raised in the test below
            failed.append(exc)

    def run_daemon() -> None:  # in a thread of its own: its niceness goes to the daemon's only
        if daemon_niceness is not None:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), daemon_niceness)
        with running_daemon(app) as running:
            assert running.sender is not None
            threads = (running.spool_worker.worker._thread, running.sender.worker._thread)

            def niceness() -> list[int]:
                return [os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threads if t.native_id]

            wait_for(lambda: len(niceness()) == 2 and set_yet(niceness()))
            seen.extend(niceness())

    runner = threading.Thread(target=daemon)
    runner.start()
    runner.join(60)
    if failed:
        raise failed[0]
    return seen


def test_background_niceness_sets_the_cpu_priority_of_ingest_and_sending(tmp_path: Path, clock) -> None:
    """The admin's `background_niceness` (the tests run their daemons at 0, see conftest)."""
    value = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
    seen = _background_niceness(tmp_path, clock, value, lambda now: now == [value, value])
    assert seen == [value, value]


def test_background_niceness_never_puts_ingest_before_the_daemon(
    tmp_path: Path, clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Below the daemon's own niceness (a unit with Nice=10, say), the threads keep the daemon's
    and the log says so: ingest and sending never get more CPU priority than the listener (as
    root, setting the value would give them more)."""
    own = max(os.getpriority(os.PRIO_PROCESS, 0), 5)
    warning = f"background_niceness 2 is below the daemon's niceness {own}: using {own}"
    seen = _background_niceness(tmp_path, clock, 2, lambda _: caplog.text.count(warning) == 2, daemon_niceness=own)
    assert seen == [own, own]
