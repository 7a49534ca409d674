"""`mailgate run` as a real process: SIGTERM in the middle of a burst of SMTP deliveries."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.config import load_settings
from mailgate.db import upgrade
from mailgate.ingest.spooled import drain
from mailgate.models import Message
from mailgate.spool import Spool
from tests.mails import mail
from tests.smtp_peers import free_port, silent_relay


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "daemon exited before listening"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("daemon did not start listening")


def _start_daemon(tmp_path: Path, stderr: object, more_config: str = "") -> tuple[subprocess.Popen, int]:
    """`mailgate run` on a SQLite database of its own, listening on a port picked here."""
    port = free_port()
    db = tmp_path / "mailgate.db"
    (tmp_path / "mailgate.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\ndatabase_url = "sqlite:///{db}"\nsecret = "daemon-test-secret"\n'
        f'[addresses]\nsupport = "support@example.com"\n[smtp]\nhost = "127.0.0.1"\nport = {port}\n' + more_config
    )
    upgrade(f"sqlite:///{db}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    command = [sys.executable, "-m", "mailgate", "--config", str(tmp_path / "mailgate.toml"), "run"]
    return subprocess.Popen(command, stderr=stderr, env=env), port


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
        _wait_listening(port, process)
        threads = [threading.Thread(target=client, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(accepted) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        stop_sending.set()
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    for t in threads:
        t.join(30)
    output = (tmp_path / "daemon.log").read_text()
    assert code == 0, output
    assert "stopping: no new connections" in output and "INFO mailgate.daemon: stopped" in output
    assert "did not stop" not in output  # the listener stopped when told, not killed
    assert elapsed < 10
    assert len(accepted) >= 40
    # What the daemon had no time to ingest is in the spool; the next start takes it.
    app = App.build(load_settings(tmp_path / "mailgate.toml"))
    spool = Spool.open(app.settings.spool_database_url)
    try:
        while drain(app, spool).taken:
            pass
        assert spool.count() == 0
        with app.sessions() as session:
            stored = set(session.scalars(select(Message.message_id)))
    finally:
        spool.close()
        app.close()
    missing = [m for m in accepted if m not in stored]
    assert missing == [], f"{len(missing)} mails got 250 but are not stored"


def test_the_daemon_polls_imap_and_the_ack_leaves_at_once(tmp_path: Path, db_url: str, clock) -> None:
    """A mail dropped into the IMAP mailbox becomes a ticket, and its acknowledgement reaches the
    Maildir sink, with every part running in one daemon."""
    from tests.conftest import make_settings
    from tests.daemon_harness import running_daemon, wait_for
    from tests.dovecot import running_dovecot

    with running_dovecot() as dovecot:
        settings = make_settings(tmp_path, db_url, smtp={"enabled": False}, imap=[dovecot.mailbox().model_dump()])
        app = App.build(settings, clock=clock)
        with running_daemon(app) as running:
            assert running.listener is None and len(running.poller_threads) == 1
            dovecot.append("INBOX", [mail(subject="Monitor flickers", message_id="<imap-1@client.example.org>")])
            sink = settings.outgoing_maildir / "new"
            wait_for(lambda: sink.is_dir() and len(list(sink.iterdir())) == 2, timeout=10)
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


def _signal_the_listener(tmp_path: Path, signum: int) -> tuple[int, str, int]:
    """Start the daemon, send `signum` to its listener process alone; (exit code, stderr, port)."""
    process, port = _start_daemon(tmp_path, subprocess.PIPE)
    try:
        _wait_listening(port, process)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        listener = [int(pid) for pid in children if "spawn_main" in _cmdline(int(pid))]
        assert len(listener) == 1, children
        os.kill(listener[0], signum)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
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
        process, port = _start_daemon(
            tmp_path, log, f'[outgoing]\nrelay_host = "127.0.0.1"\nrelay_port = {relay_port}\n'
        )
        try:
            _wait_listening(port, process)
            with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
                client.sendmail("dana@example.com", ["support@example.com"], mail())
            deadline = time.monotonic() + 20
            while not connections and time.monotonic() < deadline:
                time.sleep(0.05)
            assert connections, "the sender never tried the relay"
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            elapsed = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
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


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_background_threads_yield_the_cpu_and_the_listener_keeps_its_priority() -> None:
    from mailgate.daemon import _yield_cpu_to_the_listener

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = niceness()
    with ThreadPoolExecutor(1, initializer=_yield_cpu_to_the_listener) as background:
        assert background.submit(niceness).result() == 19
    assert niceness() == before  # the calling thread is untouched
