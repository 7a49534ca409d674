"""The SMTP listener runs in a process of its own; the rest of the daemon in the other.

Why a process: ingest() is CPU-bound Python (parsing, templates, the ORM) and holds the GIL
for milliseconds at a time; in the same process every SMTP command would wait for it
(bench/smtp.py measures both). The listener only speaks SMTP and writes each mail into the
spool directory, like `mailgate ingest` does; every writer pokes the daemon's wake-up socket.

The child says over a pipe when it listens (or why it cannot). It stops on SIGTERM/SIGINT or
when the pipe closes (the parent died): it stops accepting, finishes the mail in flight and
exits; what it answered 250 to is in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from mailgate.config import Settings
from mailgate.journal import Journal
from mailgate.spool import Spool
from mailgate.transports import smtp

log = logging.getLogger("mailgate.smtp")

GRACE_SECONDS = 5.0  # for the mail in flight at SIGTERM


class ListenerProcess:
    """The parent's handle on the listener process."""

    def __init__(self, settings: Settings, secret: bytes) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self._conn, child_end = context.Pipe()
        levels = (logging.getLogger().level, logging.getLogger("mailgate").level, logging.getLogger("mail.log").level)
        self.process = context.Process(
            target=_child_main, args=(settings, secret, child_end, levels), name="mailgate-smtp", daemon=True
        )
        self.process.start()
        child_end.close()
        self.port = 0
        # join() is not thread-safe: two threads reaping one child, the loser gets ECHILD and
        # takes the child for alive.
        self._reaping = threading.Lock()

    def wait_ready(self, timeout: float = 60) -> int:
        """The port it listens on; OSError with the child's reason if it could not start."""
        if not self._conn.poll(timeout):
            self.stop()
            raise OSError(f"the SMTP listener did not start within {timeout:.0f} s")
        try:
            message = self._conn.recv()
        except EOFError:
            self.process.join(5)
            raise OSError(f"the SMTP listener exited at start (code {self.process.exitcode})") from None
        if message[0] != "ready":
            self.process.join(5)
            raise OSError(message[1])
        self.port = int(message[1])
        return self.port

    def watch(self, on_exit: Callable[[int | None], None]) -> None:
        """Call `on_exit` with the child's exit code when it is gone (0: told to stop)."""

        def wait() -> None:
            with contextlib.suppress(EOFError, OSError):
                self._conn.recv_bytes()  # the child never writes again: this returns when it is gone
            with self._reaping:
                self.process.join(2)  # the pipe closes a moment before the exit code is known
            on_exit(self.process.exitcode)

        threading.Thread(target=wait, name="smtp-listener-watch", daemon=True).start()

    def stop(self, timeout: float = GRACE_SECONDS + 1) -> int | None:
        """SIGTERM, then wait; the child finishes the mail in flight. Returns its exit code."""
        with self._reaping:
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout)
            if self.process.is_alive():
                log.warning("SMTP listener did not stop within %.0f s: killed", timeout)
                self.process.kill()
                self.process.join(5)
        self._conn.close()
        return self.process.exitcode


# -- in the child --------------------------------------------------------------------------------


def _child_main(settings: Settings, secret: bytes, conn: Connection, levels: tuple[int, int, int]) -> None:
    logging.basicConfig(level=levels[0], format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mailgate").setLevel(levels[1])
    logging.getLogger("mail.log").setLevel(levels[2])
    if settings.smtp.auth_without_tls:  # aiosmtpd says at every connection what the config chose
        logging.getLogger("mail.log").addFilter(lambda record: "auth_require_tls == False" not in record.getMessage())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, secret, conn))


async def _serve(settings: Settings, secret: bytes, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # The parent's end closing (it died or stopped) stops us too: never an orphan holding the port.
    def parent_gone() -> None:
        loop.remove_reader(conn.fileno())  # at EOF it stays readable: once is enough
        stop.set()

    loop.add_reader(conn.fileno(), parent_gone)
    journal = Journal(Spool(settings.spool_dir))
    try:
        journal.start()
    except OSError as exc:
        conn.send(("error", f"cannot write the spool's journal {journal.folder}: {exc}"))
        return
    with journal:
        listener = smtp.Listener(settings, secret, journal)
        try:
            server = await smtp.start(listener, settings.smtp, settings.limits.max_message_bytes)
        except Exception as exc:  # the port is taken, a certificate unreadable …
            conn.send(("error", f"SMTP listener on {settings.smtp.host}:{settings.smtp.port}: {exc}"))
            return
        conn.send(("ready", server.sockets[0].getsockname()[1]))
        chores = [asyncio.create_task(listener.watch_backlog()), asyncio.create_task(listener.report_refusals())]
        await stop.wait()
        for chore in chores:
            chore.cancel()
        server.close()
        deadline = loop.time() + GRACE_SECONDS
        while listener.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.02)
