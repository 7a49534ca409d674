"""`mailgate run`: the SMTP listener (a process of its own, see transports/listener_process.py),
and in this process the spool's ingest worker, the IMAP pollers, the outbox sender and the
scheduler. SIGTERM stops accepting, lets the mail in flight finish, and exits within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailgate.app import App
from mailgate.db import make_engine, make_sessionmaker
from mailgate.ingest.spooled import SpoolWorker
from mailgate.outgoing.sender import Sender, transport_for
from mailgate.spool import Spool
from mailgate.transports.listener_process import ListenerProcess

log = logging.getLogger("mailgate.daemon")

GRACE_SECONDS = 8.0  # SIGTERM to exit: systemd waits 10 s before it kills


@dataclass
class Running:
    """What a started daemon consists of; tests read the listener's address from it."""

    listener: ListenerProcess | None = None
    spool_worker: SpoolWorker | None = None
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


async def serve(app: App, stop: asyncio.Event | None = None, on_ready: Callable[[Running], None] | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT arrives), then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
            loop.add_signal_handler(sig, stop.set)
    settings = app.settings
    running = Running()
    # Each loop has a thread of its own: queued behind a burst of ingest jobs, acks would wait.
    ingest_thread = ThreadPoolExecutor(1, "mailgate-ingest", initializer=_yield_cpu_to_the_listener)
    sender_thread = ThreadPoolExecutor(1, "mailgate-sender", initializer=_yield_cpu_to_the_listener)
    stop_threads = threading.Event()
    tasks: dict[str, asyncio.Task[None]] = {}
    failure: list[str] = []
    spool: Spool | None = None
    try:
        running.sender = Sender(app, transport_for(settings.outgoing, settings.outgoing_maildir), sender_thread)
        app.outbox_hook = running.sender.wake_up
        tasks["sender"] = asyncio.create_task(running.sender.run(stop), name="sender")
        if settings.smtp.enabled:
            spool = Spool.open(settings.spool_database_url)
            # Its own engine whose commits are not synced one by one: the worker syncs once per
            # batch before it deletes the batch from the spool. One fsync per mail here would
            # compete for the disk with the listener's, which each stand behind a 250.
            engine = make_engine(settings.effective_database_url, synced=False)
            ingest_app = dataclasses.replace(app, engine=engine, sessions=make_sessionmaker(engine))
            running.spool_worker = SpoolWorker(ingest_app, spool, ingest_thread)
            tasks["spool"] = asyncio.create_task(running.spool_worker.run(stop), name="spool")
            running.listener = ListenerProcess(settings, app.secret)
            await loop.run_in_executor(None, running.listener.wait_ready)
            running.listener.watch(running.spool_worker.wake_up, _on_listener_exit(loop, stop, failure))
        running.poller_threads = _start_pollers(app, stop_threads)
        running.scheduler = AsyncIOScheduler(timezone=UTC)
        running.scheduler.start()  # its jobs (reminders, escalations) arrive with the SLA issue
        log.info(
            "mailgate running: smtp=%s imap=%d outgoing=%s",
            f"{settings.smtp.host}:{running.smtp_port}" if running.listener else "off",
            len(running.poller_threads),
            settings.outgoing.relay_host or settings.outgoing_maildir,
        )
        if on_ready is not None:
            on_ready(running)
        await stop.wait()
        log.info("stopping: no new connections; finishing the mail in flight")
    finally:
        await _shutdown(running, stop, stop_threads, tasks)
        for pool in (ingest_thread, sender_thread):
            pool.shutdown(wait=False, cancel_futures=True)
        if spool is not None:
            spool.close()
        if running.spool_worker is not None:
            running.spool_worker.app.close()
        app.outbox_hook = None
    if failure:
        raise RuntimeError(failure[0])


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

    if "spool" in tasks and running.spool_worker is not None:
        await settle("ingest worker", tasks["spool"], deadline - 1)
        # Use the time left to ingest what is spooled; the rest waits safely for the next start.
        left = await running.spool_worker.finish(deadline - 1.5)
        if left:
            log.info("%s spooled mails left for the next start", left)
    if "sender" in tasks:
        await settle("sender", tasks["sender"], deadline - 1)  # then at most 0.5 s for hung threads
    for thread in running.poller_threads:
        thread.join(timeout=max(deadline - loop.time(), 0.1))
    if running.scheduler is not None and running.scheduler.running:
        running.scheduler.shutdown(wait=False)
    log.info("stopped")


def run(app: App) -> None:
    error: BaseException | None = None
    try:
        asyncio.run(serve(app))
    except BaseException as exc:
        error = exc
        raise
    finally:
        _exit_without_hung_threads(error)


def _exit_without_hung_threads(error: BaseException | None, grace: float = 0.5) -> None:
    """A round still busy after the shutdown deadline (a relay that stopped answering mid-mail
    holds the sender for its timeout) would keep the interpreter from exiting until systemd
    kills it. What such a round did is committed, or is done again later (its claims expire:
    at least once, never lost), so the process exits without it."""
    ours = ("mailgate-ingest", "mailgate-sender")
    busy = [t for t in threading.enumerate() if t.name.startswith(ours) and t.is_alive()]
    until = time.monotonic() + grace
    for thread in busy:
        thread.join(max(until - time.monotonic(), 0))
    if any(t.is_alive() for t in busy):
        log.warning("a delivery or ingest round was still running at the shutdown deadline: not waiting for it")
        if error is not None:  # the caller would have printed it; it exits with us now
            log.error("%s", error)
        logging.shutdown()
        os._exit(0 if error is None else 1)


def _yield_cpu_to_the_listener() -> None:
    """Give the calling thread the lowest CPU priority, niceness 19 (Linux: per thread): under a
    burst the listener, which clients wait on, gets the CPU first and preempts this thread the
    moment a client writes; spooled mail is safe and is ingested and answered once the listener
    lets go. +10 was not enough: the kernel let the running thread finish its slice before the
    woken listener got the core (bench/smtp.py, one client: 47% of the do-nothing rate at +10,
    61-67% at 19). Not the idle class: its threads also get idle-class disk I/O and can starve
    while holding a database lock."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
