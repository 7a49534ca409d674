"""`mailgate run`: the SMTP listener, the spool's worker, the IMAP pollers, the outbox sender and
the scheduler. SIGTERM stops accepting, lets the mail in flight finish, and exits within seconds.

At start the daemon becomes the worker of its spool directory (one daemon per data directory:
a second one is refused), takes back at once the claims a dead worker left, and moves what an
earlier release left in its database spool into the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailgate.app import App
from mailgate.ingest.spooled import SpoolWorker
from mailgate.legacy_spool import drain_legacy_spool
from mailgate.outgoing.outbox import release_claims
from mailgate.outgoing.sender import Sender, transport_for
from mailgate.spool import Spool
from mailgate.transports.listener_process import ListenerProcess

log = logging.getLogger("mailgate.daemon")

GRACE_SECONDS = 8.0  # SIGTERM to exit: systemd waits 10 s before it kills


@dataclass
class Running:
    """What a started daemon consists of; tests read the listener's address from it."""

    spool: Spool
    spool_worker: SpoolWorker
    listener: ListenerProcess | None = None
    sender: Sender | None = None
    scheduler: AsyncIOScheduler | None = None
    poller_threads: list[threading.Thread] = field(default_factory=list)

    @property
    def smtp_port(self) -> int:
        assert self.listener is not None
        return self.listener.port


def _start_pollers(app: App, stop: threading.Event) -> list[threading.Thread]:
    if not app.settings.imap:
        return []
    from mailgate.transports.imap import ImapPoller

    threads = []
    for mailbox in app.settings.imap:
        poller = ImapPoller(app, mailbox)
        thread = threading.Thread(target=poller.run, args=(stop,), name=f"imap-{mailbox.name}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def open_spool(app: App) -> Spool:
    """This daemon's spool, locked, with a dead worker's claims given back: SpoolBusy if another
    daemon works it."""
    spool = Spool(app.settings.spool_dir)
    spool.lock()
    back = spool.recover()
    if back:
        log.warning("%d mails a stopped daemon was ingesting are due again at once", back)
    drain_legacy_spool(app.settings, spool)
    return spool


def daemon_name(spool: Spool) -> str:
    """What this daemon calls itself on the outbox rows it claims: its host and its spool, which
    only one running daemon can hold. Several daemons on one PostgreSQL database differ in it."""
    name = f"{socket.gethostname()}:{spool.root.resolve()}"
    return name if len(name) <= 200 else hashlib.sha256(name.encode()).hexdigest()


def take_back_outbox_claims(app: App, name: str) -> None:
    """Mail this daemon's previous run was delivering when it died goes out now, not in ten
    minutes when the claims run out."""
    try:
        with app.sessions() as session:
            back = release_claims(session, name, app.clock.now())
    except Exception as exc:  # the database is down: the daemon still takes mail into its spool
        log.warning("could not look for outgoing mail left claimed (%s): it goes out when its claim ends", exc)
        return
    if back:
        log.warning("%d outgoing mails a stopped daemon was delivering are due again at once", back)


async def serve(app: App, stop: asyncio.Event | None = None, on_ready: Callable[[Running], None] | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT arrives), then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
            loop.add_signal_handler(sig, stop.set)
    settings = app.settings
    spool = open_spool(app)
    name = daemon_name(spool)
    take_back_outbox_claims(app, name)
    # Each loop has a thread of its own: queued behind a burst of ingest jobs, acks would wait.
    ingest_thread = ThreadPoolExecutor(1, "mailgate-ingest")
    sender_thread = ThreadPoolExecutor(1, "mailgate-sender")
    running = Running(spool, SpoolWorker(app, spool, ingest_thread))
    stop_threads = threading.Event()
    tasks: dict[str, asyncio.Task[None]] = {}
    failure: list[str] = []
    wakeups: socket.socket | None = None
    try:
        transport = transport_for(settings.outgoing, settings.outgoing_maildir)
        running.sender = Sender(app, transport, sender_thread, claimer=name)
        app.outbox_hook = running.sender.wake_up
        tasks["sender"] = asyncio.create_task(running.sender.run(stop), name="sender")
        # Every writer of the spool (the listener, `mailgate ingest` from an MTA) pokes this.
        wakeups = spool.listen_for_wakeups()
        loop.add_reader(wakeups.fileno(), _on_poke, wakeups, running.spool_worker.wake_up)
        tasks["spool"] = asyncio.create_task(running.spool_worker.run(stop), name="spool")
        if settings.smtp.enabled:
            running.listener = ListenerProcess(settings, app.secret)
            await loop.run_in_executor(None, running.listener.wait_ready)
            running.listener.watch(_on_listener_exit(loop, stop, failure))
        running.poller_threads = _start_pollers(app, stop_threads)
        running.scheduler = AsyncIOScheduler(timezone=UTC)
        running.scheduler.start()  # its jobs (reminders, escalations) arrive with the SLA issue
        log.info(
            "mailgate running: smtp=%s imap=%d outgoing=%s spool=%s",
            f"{settings.smtp.host}:{running.smtp_port}" if running.listener else "off",
            len(running.poller_threads),
            settings.outgoing.relay_host or settings.outgoing_maildir,
            spool.root,
        )
        if on_ready is not None:
            on_ready(running)
        await stop.wait()
        log.info("stopping: no new connections; finishing the mail in flight")
    finally:
        await _shutdown(running, stop, stop_threads, tasks)
        if wakeups is not None:
            loop.remove_reader(wakeups.fileno())
            wakeups.close()
        for pool in (ingest_thread, sender_thread):
            pool.shutdown(wait=False, cancel_futures=True)
        spool.unlock()
        app.outbox_hook = None
    if failure:
        raise RuntimeError(failure[0])


def _on_poke(wakeups: socket.socket, wake_up: Callable[[], None]) -> None:
    with contextlib.suppress(BlockingIOError):
        while wakeups.recv(64):  # many pokes, one round
            pass
    wake_up()


def _on_listener_exit(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, failure: list[str]
) -> Callable[[int | None], None]:
    """The listener process went away: expected at shutdown, otherwise the daemon stops too
    (systemd restarts it) rather than run on without taking mail. Exit code 0 means it was told
    to stop: `systemctl stop` signals both processes, and the listener may be done before this
    process has handled its own SIGTERM; that is a stop, not a failure."""

    def gone(code: int | None) -> None:
        if stop.is_set():
            return
        if code == 0:
            log.info("the SMTP listener process was stopped: stopping")
        else:
            failure.append("the SMTP listener process exited unexpectedly")
            log.error("the SMTP listener process exited unexpectedly (exit code %s): stopping", code)
        stop.set()

    def from_thread(code: int | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(gone, code)

    return from_thread


async def _shutdown(
    running: Running, stop: asyncio.Event, stop_threads: threading.Event, tasks: dict[str, asyncio.Task[None]]
) -> None:
    stop.set()
    stop_threads.set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GRACE_SECONDS
    if running.listener is not None:
        # No new connections; the mail in flight is spooled (250) or refused (the client retries).
        code = await loop.run_in_executor(None, running.listener.stop)
        if code:
            log.warning("SMTP listener exited with code %s", code)

    async def settle(name: str, task: asyncio.Task[None], until: float) -> None:
        try:
            await asyncio.wait_for(task, timeout=max(until - loop.time(), 0.1))
        except (TimeoutError, asyncio.CancelledError):
            log.warning("%s still busy at shutdown; its work stays queued for next time", name)

    if "spool" in tasks:
        await settle("ingest worker", tasks["spool"], deadline - 1)
        # Use the time left to ingest what is spooled; the rest waits safely for the next start.
        left = await running.spool_worker.finish(deadline - 1.5)
        if left:
            log.info("%s spooled mails left for the next start", left)
    if "sender" in tasks and running.sender is not None:
        await settle("sender", tasks["sender"], deadline - 2)
        # A delivery still hanging on a silent relay would hold the process past systemd's
        # patience: cut its connection, and the round ends at once.
        running.sender.transport.abort()
    for thread in running.poller_threads:
        thread.join(timeout=max(deadline - loop.time(), 0.1))
    if running.scheduler is not None and running.scheduler.running:
        running.scheduler.shutdown(wait=False)
    log.info("stopped")


def run(app: App) -> None:
    asyncio.run(serve(app))
