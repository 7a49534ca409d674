"""`mailgate run`: the SMTP listener, the IMAP pollers, the outbox sender and the scheduler in
one process. SIGTERM stops accepting, lets the mail in flight finish, and exits within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailgate.app import App
from mailgate.outbox import transport_for
from mailgate.sender import Sender
from mailgate.transports import smtp

log = logging.getLogger("mailgate.daemon")

GRACE_SECONDS = 8.0  # SIGTERM to exit: systemd waits 10 s before it kills


@dataclass
class Running:
    """What a started daemon consists of; tests read the listener's address from it."""

    smtp_server: asyncio.AbstractServer | None = None
    listener: smtp.Listener | None = None
    sender: Sender | None = None
    scheduler: AsyncIOScheduler | None = None
    poller_threads: list[threading.Thread] = field(default_factory=list)

    @property
    def smtp_port(self) -> int:
        assert self.smtp_server is not None
        return int(self.smtp_server.sockets[0].getsockname()[1])


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
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mailgate")
    sender_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailgate-sender")
    stop_threads = threading.Event()
    sender_task: asyncio.Task[None] | None = None
    try:
        # The sender has a thread of its own: queued behind a burst of ingest jobs, acks would wait.
        running.sender = Sender(app, transport_for(settings.outgoing, settings.outgoing_maildir), sender_thread)
        app.outbox_hook = running.sender.wake_up
        sender_task = asyncio.create_task(running.sender.run(stop), name="sender")
        if settings.smtp.enabled:
            running.listener = smtp.Listener(app, executor)
            running.smtp_server = await smtp.start(running.listener, settings.smtp, settings.limits.max_message_bytes)
        running.poller_threads = _start_pollers(app, stop_threads)
        running.scheduler = AsyncIOScheduler(timezone=UTC)
        running.scheduler.start()  # its jobs (reminders, escalations) arrive with the SLA issue
        log.info(
            "mailgate running: smtp=%s imap=%d outgoing=%s",
            f"{settings.smtp.host}:{running.smtp_port}" if running.smtp_server else "off",
            len(running.poller_threads),
            settings.outgoing.relay_host or settings.outgoing_maildir,
        )
        if on_ready is not None:
            on_ready(running)
        await stop.wait()
        log.info("stopping: no new connections; finishing the mail in flight")
    finally:
        await _shutdown(running, stop, stop_threads, sender_task, executor)
        sender_thread.shutdown(wait=False, cancel_futures=True)
        app.outbox_hook = None


async def _shutdown(
    running: Running,
    stop: asyncio.Event,
    stop_threads: threading.Event,
    sender_task: asyncio.Task[None] | None,
    executor: ThreadPoolExecutor,
) -> None:
    stop.set()
    stop_threads.set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GRACE_SECONDS
    if running.smtp_server is not None:
        running.smtp_server.close()  # no new connections; open ones may finish their DATA
    # A mail that got no 250 is still the client's to retry: waiting for those in flight is enough.
    while running.listener is not None and running.listener.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if sender_task is not None:
        try:
            await asyncio.wait_for(sender_task, timeout=max(deadline - loop.time(), 0.1))
        except (TimeoutError, asyncio.CancelledError):
            log.warning("sender still busy at shutdown; its row stays queued for next time")
    for thread in running.poller_threads:
        thread.join(timeout=max(deadline - loop.time(), 0.1))
    if running.scheduler is not None and running.scheduler.running:
        running.scheduler.shutdown(wait=False)
    executor.shutdown(wait=False, cancel_futures=True)
    log.info("stopped")


def run(app: App) -> None:
    asyncio.run(serve(app))
