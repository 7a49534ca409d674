"""The listener under abuse, with real clients on loopback bound to addresses of their own
(127.0.0.0/8 all reaches lo): idle connections from one address, floods of short lines,
password guessing, refusal after refusal."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.config import ConfigError, Settings, Smtp, load_settings
from mailgate.journal import Journal
from mailgate.models import Message
from mailgate.spool import Spool
from mailgate.transports import smtp
from tests.conftest import make_settings
from tests.daemon_harness import running_daemon, wait_for, wait_listening
from tests.mails import mail
from tests.test_daemon import _cmdline, _sigterm, _start_daemon, _stop

IDLE, GOOD, FLOOD, GUESSER, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.6", "127.0.0.5"


def _from(address: str, port: int, timeout: float = 30) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, timeout=timeout, source_address=(address, 0))


def _listener_pid(daemon: subprocess.Popen) -> int:
    children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
    (pid,) = (int(c) for c in children if "spawn_main" in _cmdline(int(c)))
    return pid


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = (line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


class IdleClients:
    """Connections from one address that say NOOP now and then and never send mail."""

    def __init__(self, address: str, port: int, count: int) -> None:
        self.held: list[smtplib.SMTP] = []
        self.refusals: list[int] = []
        for _ in range(count):
            try:
                self.held.append(_from(address, port))
            except smtplib.SMTPConnectError as refused:
                self.refusals.append(refused.smtp_code)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive)
        self._thread.start()

    def _keep_alive(self) -> None:
        while not self._stop.wait(0.5):
            for client in self.held:
                with suppress(OSError, smtplib.SMTPException):
                    client.noop()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for client in self.held:
            with suppress(OSError):
                client.close()


class Flood:
    """A client that sends DATA made of 3-byte lines as fast as the listener takes them."""

    def __init__(self, address: str, port: int, total_bytes: int) -> None:
        self.client = _from(address, port, timeout=120)
        self.client.ehlo()
        self.client.mail("flood@example.org")
        self.client.rcpt("support@example.com")
        assert self.client.docmd("DATA")[0] == 354
        self.total_bytes, self.sent = total_bytes, 0
        self.reply: tuple[int, bytes] | None = None
        self._thread = threading.Thread(target=self._send)
        self._thread.start()

    def _send(self) -> None:
        chunk = b"a\r\n" * 20_000
        while self.sent < self.total_bytes:
            self.client.sock.sendall(chunk)
            self.sent += len(chunk)
        self.client.sock.sendall(b".\r\n")
        self.reply = self.client.getreply()

    def wait(self) -> tuple[int, bytes] | None:
        self._thread.join(120)
        return self.reply

    def close(self) -> None:
        with suppress(OSError):
            self.client.close()
        self._thread.join(5)


def test_idle_connections_and_a_flood_of_short_lines_leave_another_client_served_in_2_s(tmp_path: Path) -> None:
    """The goal of issue 10: 150 idle connections from one address and a DATA flood of 3-byte
    lines from another; a third client's mail gets its 250 within 2 s, the listener process
    stays under 400 MB (and near the size of the mail), and SIGTERM still stops the daemon
    within 10 s with all those connections open."""
    limit = 20 * 2**20
    flood_bytes = limit + 4 * 2**20  # over the limit: refused with 552 once all of it is read
    log = (tmp_path / "daemon.log").open("wb")
    process, port = _start_daemon(tmp_path, log, f"[limits]\nmax_message_bytes = {limit}\n")
    idle: IdleClients | None = None
    flood: Flood | None = None
    try:
        wait_listening(port, process)
        listener = _listener_pid(process)
        at_start = _peak_rss_mb(listener)
        idle = IdleClients(IDLE, port, 150)
        flood = Flood(FLOOD, port, flood_bytes)
        wait_for(lambda: flood.sent > flood_bytes / 4, timeout=60)
        started = time.monotonic()
        with _from(GOOD, port, timeout=10) as good:
            refused = good.sendmail("dana@example.com", ["support@example.com"], mail())
        answered_in = time.monotonic() - started
        assert flood.sent < flood_bytes, "the flood was over before the mail was sent: nothing measured"
        print("FIGURES answered_in", answered_in)
        assert refused == {} and answered_in < 2.0, answered_in
        reply = flood.wait()
        assert reply is not None and reply[0] == 552
        peak = _peak_rss_mb(listener)
        print("FIGURES peak", peak, at_start)
        assert peak < 400, peak
        assert peak - at_start < 3 * limit / 2**20, (at_start, peak)
        assert len(idle.held) == Smtp().max_connections_per_client
        assert set(idle.refusals) == {421}
        code, elapsed = _sigterm(process)
    finally:
        for clients in (idle, flood):
            if clients is not None:
                clients.close()
        _stop(process)
        log.close()
    output = (tmp_path / "daemon.log").read_text()
    assert code == 0 and elapsed < 10, output


# -- the listener in this process: its log is the test's, its clock the test's ----------------


@dataclass
class InProcess:
    port: int
    listener: smtp.Listener
    loop: asyncio.AbstractEventLoop

    def call(self, function: Callable[[], Any]) -> Any:
        """`function()` run on the listener's loop (its state belongs to that thread)."""

        async def run() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


@contextmanager
def listener_on_loopback(settings: Settings, clock: FixedClock) -> Iterator[InProcess]:
    """The listener alone (no daemon, no database) on an event loop in a thread of its own."""
    loop = asyncio.new_event_loop()
    journal = Journal(Spool(settings.spool_dir)).start()
    listener = smtp.Listener(settings, b"test-secret-not-for-production", journal, clock)
    server = loop.run_until_complete(smtp.start(listener, settings.smtp, settings.limits.max_message_bytes))
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        yield InProcess(server.sockets[0].getsockname()[1], listener, loop)
    finally:
        server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(server.wait_closed())
        loop.close()
        journal.close()


def _settings(tmp_path: Path, **smtp_settings: object) -> Settings:
    return make_settings(tmp_path, "sqlite://", smtp={"host": "127.0.0.1", "port": 0, **smtp_settings})


def _lines(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if all(w in r.getMessage() for w in words)]


def test_refused_recipients_are_logged_once_per_client_and_minute_with_a_count(
    tmp_path: Path, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.smtp")
    with listener_on_loopback(_settings(tmp_path), clock) as listening:
        with _from(STRANGER, listening.port) as client:
            client.ehlo()
            client.mail("probe@example.org")
            codes = {client.rcpt(f"user{n}@example.com")[0] for n in range(500)}
        with _from(GOOD, listening.port) as other:
            other.ehlo()
            other.mail("dana@example.com")
            assert other.rcpt("nobody@example.com")[0] == 550
        assert codes == {550}
        assert len(_lines(caplog, "refused recipient", STRANGER)) == 1
        assert len(_lines(caplog, "refused recipient", GOOD)) == 1  # a client of its own
        clock.advance(timedelta(seconds=61))
        listening.call(listening.listener.refusals.report_due)
    assert _lines(caplog, "499 more refused recipients from 127.0.0.5")
    assert len(_lines(caplog, STRANGER)) == 2


def _spooled(settings: Settings) -> list[bytes]:
    spool = Spool(settings.spool_dir)
    claimed = [spool.claim(name) for name in spool.due(datetime.now(UTC) + timedelta(days=1))]
    return [c.raw for c in claimed if c is not None]


def test_short_lines_and_dot_stuffed_lines_are_kept_byte_for_byte(tmp_path: Path, clock: FixedClock) -> None:
    settings = _settings(tmp_path)
    body = b"".join([b"a\r\n" * 5000, b".\r\n", b"..\r\n", b".hidden line\r\n", b"\r\n" * 300, b"last\r\n"])
    raw = mail(body="x\n").replace(b"x\r\n", b"") + body
    with listener_on_loopback(settings, clock) as listening, _from(GOOD, listening.port) as client:
        assert client.sendmail("dana@example.com", ["support@example.com"], raw) == {}  # smtplib dot-stuffs
    assert _spooled(settings) == [raw]


def test_a_line_longer_than_rfc_5321_allows_is_refused_after_the_final_dot(tmp_path: Path, clock: FixedClock) -> None:
    settings = _settings(tmp_path)
    raw, good = mail(body="ok\n") + b"y" * 5000 + b"\r\n", mail()
    with listener_on_loopback(settings, clock) as listening, _from(GOOD, listening.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("dana@example.com", ["support@example.com"], raw)
        assert (info.value.smtp_code, info.value.smtp_error[:5]) == (500, b"5.5.2")
        assert client.noop()[0] == 250  # the session goes on
        assert client.sendmail("dana@example.com", ["support@example.com"], good) == {}
    assert _spooled(settings) == [good]


def test_connections_are_limited_per_client_address_and_in_all(tmp_path: Path, clock: FixedClock) -> None:
    settings = _settings(tmp_path, max_connections=3, max_connections_per_client=2)
    with listener_on_loopback(settings, clock) as listening:
        first, second = _from(IDLE, listening.port), _from(IDLE, listening.port)
        with pytest.raises(smtplib.SMTPConnectError) as info:
            _from(IDLE, listening.port)
        assert info.value.smtp_code == 421 and b"your address" in info.value.smtp_error
        other = _from(GOOD, listening.port)  # another client still gets in
        assert other.noop()[0] == 250
        with pytest.raises(smtplib.SMTPConnectError) as info:
            _from(STRANGER, listening.port)  # all three slots taken
        assert info.value.smtp_code == 421
        first.quit()
        wait_for(lambda: listening.call(lambda: listening.listener.slots.held) == 2)
        third = _from(IDLE, listening.port)  # its slot is free again
        for client in (second, other, third):
            client.quit()


def _auth_settings(tmp_path: Path, **more: object) -> Settings:
    return _settings(tmp_path, auth_without_tls=True, auth_users={"scanner": "scan-password-123"}, **more)


def test_password_guesses_end_the_connection_after_three_and_are_logged_once_a_minute(
    tmp_path: Path, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.smtp")
    with listener_on_loopback(_auth_settings(tmp_path), clock) as listening:
        for _ in range(5):
            with _from(GUESSER, listening.port) as client:
                client.ehlo()
                replies = [client.docmd("AUTH", f"PLAIN {_plain('scanner', f'guess{n}')}")[0] for n in range(3)]
                assert replies == [535, 535, 421]
                with pytest.raises(smtplib.SMTPServerDisconnected):
                    client.noop()
        with _from(GOOD, listening.port) as client:
            client.login("scanner", "scan-password-123")  # the right password still works
        failures = _lines(caplog, "failed AUTH")
        assert failures == ["failed AUTH PLAIN as 'scanner' from 127.0.0.6"]
        clock.advance(timedelta(seconds=61))
        listening.call(listening.listener.refusals.report_due)
    assert _lines(caplog, "14 more failed authentications from 127.0.0.6")
    assert not any("guess" in r.getMessage() for r in caplog.records)  # never a password in the log


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_auth_is_offered_only_over_tls(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text('[smtp]\nhost = "0.0.0.0"\nauth_users = { scanner = "a-long-password" }\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "smtp.auth_users" in str(info.value) and "tls_cert" in str(info.value)
    config.write_text('[smtp]\nhost = "0.0.0.0"\nauth_without_tls = true\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "smtp.auth_without_tls = True" in str(info.value) and "loopback" in str(info.value)


def test_auth_in_the_clear_when_the_config_says_the_listener_is_on_loopback(tmp_path: Path, clock: FixedClock) -> None:
    settings = _auth_settings(tmp_path, require_auth=True)
    with listener_on_loopback(settings, clock) as listening, _from(GOOD, listening.port) as client:
        client.ehlo()
        assert client.has_extn("auth")
        client.login("scanner", "scan-password-123")
        assert client.sendmail("scanner@example.com", ["support@example.com"], mail()) == {}


def test_queued_as_names_a_different_spool_file_for_every_mail_also_after_a_restart(daemon_app: App) -> None:
    """Issue 10: on SQLite "Queued as N" repeated the same N (a row id used again once its row was
    deleted). The spool names a mail by time, process and a random part: never the same twice."""
    names = []
    for restart in range(2):
        with running_daemon(daemon_app) as running:
            for n in range(3):
                with smtplib.SMTP("127.0.0.1", running.smtp_port) as client:
                    client.ehlo()
                    client.mail("dana@example.com")
                    client.rcpt("support@example.com")
                    code, reply = client.data(mail(message_id=f"<queued-{restart}-{n}@example.org>"))
                assert code == 250
                names.append(reply.decode().removeprefix("2.0.0 Queued as "))
                wait_for(lambda: running.spool.count() == 0)  # ingested: its file is gone
    assert len(set(names)) == 6, names
    with daemon_app.sessions() as s:
        assert len(s.scalars(select(Message)).all()) == 6


@pytest.fixture
def daemon_app(tmp_path: Path, sqlite_template: Path, clock: FixedClock) -> Iterator[App]:
    db = tmp_path / "mailgate.db"
    shutil.copy(sqlite_template, db)
    app = App.build(make_settings(tmp_path, f"sqlite:///{db}", smtp={"host": "127.0.0.1", "port": 0}), clock=clock)
    yield app
    app.close()
