"""The SMTP listener runs in a process of its own, the rest of the daemon in the other.

Why a process: ingest() is CPU-bound Python (parsing, templates, the ORM), and a thread running
it holds the GIL for up to 5 ms at a time. Every SMTP command the listener answers then waits
for it; measured here, a listener beside one ingest thread fell from ~1,300 to ~160 mails/s.
In its own process the listener only speaks SMTP and commits mail to the spool.

The two talk over a pipe: the child says when it listens (or why it cannot), and sends a word
for each spooled mail so the ingest worker starts at once. The child stops on SIGTERM/SIGINT
or when the pipe closes (the parent died): it stops accepting, finishes the mail in flight and
exits; what it answered 250 to is in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from mailgate.config import Settings
from mailgate.db import describe
from mailgate.spool import Spool
from mailgate.transports import smtp
from mailgate.transports.group_commit import GroupCommit

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
        self._reader: threading.Thread | None = None
        # join() is not thread-safe: two threads reaping one child, the loser gets ECHILD and
        # takes the child for alive (stop() would then report it stuck and kill a dead process).
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

    def watch(self, on_queued: Callable[[], None], on_exit: Callable[[int | None], None]) -> None:
        """Call `on_queued` (from a thread of ours) for each spooled mail, `on_exit` with the
        child's exit code when it is gone (0: it was told to stop, by SIGTERM or SIGINT)."""

        def read() -> None:
            try:
                while True:
                    self._conn.recv_bytes()
                    on_queued()
            except (EOFError, OSError):
                with self._reaping:  # the pipe closes a moment before the exit code is known
                    self.process.join(2)
                on_exit(self.process.exitcode)

        self._reader = threading.Thread(target=read, name="smtp-listener-pipe", daemon=True)
        self._reader.start()

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
    # The spool thread, back from its commit, waits for the GIL until the busy event loop lets go:
    # by default up to 5 ms, which would bound a batch to that. A short interval keeps it short.
    sys.setswitchinterval(0.0005)
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
    try:
        spool = Spool.open(settings.spool_database_url, pre_ping=False)  # a round trip less per mail
    except Exception as exc:
        conn.send(("error", f"cannot open the spool: {describe(exc)}"))
        return
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")

    def written(count: int) -> None:
        listener.spooled_more(count)
        _tell(conn)

    listener = smtp.Listener(settings, secret, GroupCommit(spool, executor, on_written=written))
    try:
        server = await smtp.start(listener, settings.smtp, settings.limits.max_message_bytes)
    except Exception as exc:  # the port is taken, a certificate unreadable …
        conn.send(("error", f"SMTP listener on {settings.smtp.host}:{settings.smtp.port}: {exc}"))
        spool.close()
        return
    conn.send(("ready", server.sockets[0].getsockname()[1]))
    os.set_blocking(conn.fileno(), False)
    backlog = asyncio.create_task(listener.watch_backlog(lambda: loop.run_in_executor(executor, spool.count)))
    await stop.wait()
    backlog.cancel()
    server.close()
    deadline = loop.time() + GRACE_SECONDS
    while listener.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.02)
    executor.shutdown(wait=True)
    spool.close()


def _tell(conn: Connection) -> None:
    # Never block the event loop on the pipe: a full pipe means the parent has wake-ups waiting
    # already. (An empty message is 4 bytes, below PIPE_BUF: written whole or not at all.)
    with contextlib.suppress(OSError):  # BlockingIOError, or the parent is gone: nobody to tell
        conn.send_bytes(b"")
