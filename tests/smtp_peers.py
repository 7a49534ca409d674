"""Real SMTP peers for tests: an aiosmtpd relay on 127.0.0.1 that records or refuses mail."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class CapturingRelay:
    """Accepts every mail (or answers `reply` to DATA) and keeps what it got."""

    reply: str = "250 OK"
    received: list[Envelope] = field(default_factory=list)
    connections: int = 0  # sessions that sent mail
    quits: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not getattr(session, "counted", False):
            session.counted = True  # type: ignore[attr-defined]
            self.connections += 1
        if self.reply.startswith("250"):
            self.received.append(envelope)
        return self.reply

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"


@contextmanager
def relay(reply: str = "250 OK") -> Iterator[tuple[CapturingRelay, int]]:
    handler = CapturingRelay(reply)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@contextmanager
def silent_relay() -> Iterator[tuple[list[socket.socket], int]]:
    """A relay that accepts connections and never says a word (a firewall eating the traffic)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield accepted, server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()
