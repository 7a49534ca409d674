"""The listener under abuse, with real clients on loopback bound to addresses of their own
(127.0.0.0/8 all reaches lo): idle connections from one address, floods of short lines,
password guessing, refusal after refusal."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mailgate.clock import FixedClock
from mailgate.config import Settings, Smtp
from mailgate.spool import Spool
from mailgate.transports import smtp
from tests.conftest import make_settings
from tests.daemon_harness import wait_for, wait_listening
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
    writer = ThreadPoolExecutor(1)
    listener = smtp.Listener(settings, b"test-secret-not-for-production", Spool(settings.spool_dir), writer, clock)
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
        writer.shutdown()


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
