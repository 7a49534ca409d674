"""`mailgate run`: the SMTP listener, the spool's worker, the IMAP pollers, the outbox sender and
the scheduler. SIGTERM stops accepting, lets the mail in flight finish, and exits within seconds.

At start the daemon becomes the worker of its spool directory (one daemon per data directory:
a second one is refused), takes back at once the claims a dead worker left, and moves what an
earlier release left in its database spool into the directory.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import DBAPIError, OperationalError

from mailgate import journal
from mailgate.app import App
from mailgate.config_file import ConfigError
from mailgate.db import describe, reader, schema_problem
from mailgate.ingest.spooled import SpoolWorker
from mailgate.outgoing.sender import Sender, transport_for
from mailgate.spool import Spool
from mailgate.transports.listener_process import ListenerProcess

if TYPE_CHECKING:
    from mailgate.sla.job import Scanner  # imported when the daemon schedules it
    from mailgate.transports.imap import ImapPoller  # imported when a mailbox is configured

log = logging.getLogger("mailgate.daemon")

GRACE_SECONDS = 8.0  # SIGTERM to exit: systemd waits 10 s before it kills


@dataclass
class Running:
    """What a started daemon consists of; tests read the listener's address from it."""

    spool: Spool
    spool_worker: SpoolWorker
    sender: Sender | None = None
    listener: ListenerProcess | None = None
    scheduler: BackgroundScheduler | None = None
    scanner: Scanner | None = None  # the SLA scans the scheduler starts
    poller_threads: list[threading.Thread] = field(default_factory=list)
    pollers: list[ImapPoller] = field(default_factory=list)  # `state` says which waits in IDLE
    stop_pollers: threading.Event = field(default_factory=threading.Event)
    wakeup_thread: threading.Thread | None = None  # holds the wake-up name until it ends

    @property
    def smtp_port(self) -> int:
        assert self.listener is not None
        return self.listener.port


def _start_pollers(running: Running, app: App) -> None:
    if not app.settings.imap:
        return
    from mailgate.transports.imap import ImapPoller

    for mailbox in app.settings.imap:
        poller = ImapPoller(app, mailbox)
        thread = threading.Thread(
            target=poller.run, args=(running.stop_pollers,), name=f"imap-{mailbox.name}", daemon=True
        )
        thread.start()
        running.pollers.append(poller)
        running.poller_threads.append(thread)


def open_spool(app: App) -> Spool:
    """This daemon's spool, locked, with a dead worker's claims given back: SpoolBusy if another
    daemon works it. No database work here: the database may be down, or hang, and mail must
    be accepted all the same (what needs the database is done by the workers' first rounds)."""
    spool = Spool(app.settings.spool_dir)
    spool.lock()
    back = spool.recover()
    if back:
        log.warning("%d mails a stopped daemon was ingesting are due again at once", back)
    restored = journal.recover(spool)
    if restored:
        log.warning("the machine went down since the listener last ran: %d mails relinked from its journal", restored)
    return spool


def check_schema(app: App) -> None:
    """A database without this release's schema stops the start with the way out (else every
    part would log its failure every round). One that cannot be reached is an outage: the daemon
    starts, and the spool keeps the mail until the database is back."""
    try:
        # A reading transaction: on SQLite it never waits for a writer's lock (a `mailgate
        # import` running), so the start neither waits 5 s nor skips the check.
        with reader(app.engine).connect() as connection:
            problem = schema_problem(connection)
    except DBAPIError as exc:
        # An outage is a server that cannot be reached or SQLite's lock held; anything else (a
        # file that is no database, no rights on the tables) a person must mend.
        sqlite = app.engine.dialect.name == "sqlite"
        outage = "database is locked" in str(exc) if sqlite else isinstance(exc, OperationalError)
        if not outage:
            raise ConfigError(f"the database cannot be read: {describe(exc)}") from exc
        log.warning("cannot read the database's schema now (%s): starting; mail waits in the spool", describe(exc))
        return
    if problem is not None:
        raise ConfigError(problem)


def serve(app: App, stop: threading.Event | None = None, on_ready: Callable[[Running], None] | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT arrives), then shut down gracefully."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():  # tests run the daemon in a thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _signum, _frame: stop.set())
    check_schema(app)  # after the handlers: a server slow to answer must not make SIGTERM kill us
    settings = app.settings
    spool = open_spool(app)
    previous_run, this_run = spool.new_run()
    transport = transport_for(settings.outgoing, settings.outgoing_maildir)
    sender = Sender(app, transport, claimer=this_run, previous_claimer=previous_run)
    running = Running(spool, SpoolWorker(app, spool, legacy=True), sender=sender)
    failure: list[str] = []
    try:
        assert running.sender is not None
        app.outbox_hook = running.sender.wake_up
        running.sender.worker.start()
        running.spool_worker.worker.start()
        # Every writer of the spool (the listener, `mailgate ingest` from an MTA) pokes this.
        try:
            wakeups = spool.listen_for_wakeups()
        except OSError as exc:  # another process holds the name: mail is still found, only later
            log.warning(
                "cannot listen for wake-ups (%s): spooled mail is looked for every %.0f s instead",
                exc,
                SpoolWorker.IDLE_SECONDS,
            )
        else:
            running.wakeup_thread = threading.Thread(
                target=_pass_on_pokes,
                args=(wakeups, running.spool_worker.wake_up, stop),
                name="spool-wakeups",
                daemon=True,
            )
            running.wakeup_thread.start()
        if settings.smtp.enabled:
            running.listener = ListenerProcess(settings, app.secret)
            if not _listener_up(running.listener, stop):
                return  # told to stop while it started: the finally stops what runs
            running.listener.watch(_on_listener_exit(stop, failure))
        _start_pollers(running, app)
        running.scheduler = BackgroundScheduler(timezone=UTC)
        running.scanner = _schedule_sla(app, running.scheduler)
        running.scheduler.start()
        log.info(
            "mailgate running: smtp=%s imap=%d outgoing=%s spool=%s",
            f"{settings.smtp.host}:{running.smtp_port}" if running.listener else "off",
            len(running.poller_threads),
            settings.outgoing.relay_host or settings.outgoing_maildir,
            spool.root,
        )
        if on_ready is not None:
            on_ready(running)
        while not stop.wait(1.0):  # a timeout: signal handlers run between the waits
            pass
        log.info("stopping: no new connections; finishing the mail in flight")
    finally:
        stop.set()
        try:
            _shutdown(running)
        finally:
            spool.unlock()  # even if the shutdown failed: the next daemon may take the spool
            app.outbox_hook = None
    if failure:
        raise RuntimeError(failure[0])


def _listener_up(listener: ListenerProcess, stop: threading.Event) -> bool:
    """Whether the listener is up; False when the daemon was told to stop while it started.
    systemd's SIGTERM reaches every process of the unit: a listener still importing dies of it
    before its handler is set, and that is a stop, not a failure."""
    try:
        listener.wait_ready()
        return True
    except OSError as exc:
        if stop.is_set():
            log.info("told to stop while the SMTP listener started (%s)", exc)
            return False
        raise


def _schedule_sla(app: App, scheduler: BackgroundScheduler) -> Scanner:
    """The SLA scans, at once (a daemon that was down catches up at its start) and then every
    sla.scan_interval_seconds. Missed runs coalesce into one, and one run at a time: the scans
    find what is overdue by query, so one late run does what the missed ones would have."""
    from mailgate.sla.job import Scanner

    scanner = Scanner(app)
    scheduler.add_job(
        scanner,
        "interval",
        seconds=app.settings.sla.scan_interval_seconds,
        id="sla-scans",
        next_run_time=datetime.now(UTC),
        coalesce=True,
        max_instances=1,
    )
    return scanner


def _pass_on_pokes(wakeups: socket.socket, wake_up: Callable[[], None], stop: threading.Event) -> None:
    with wakeups:
        wakeups.settimeout(0.5)  # to notice the stop
        while not stop.is_set():
            try:
                wakeups.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            wake_up()


def _on_listener_exit(stop: threading.Event, failure: list[str]) -> Callable[[int | None], None]:
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

    return gone


def _shutdown(running: Running) -> None:
    deadline = time.monotonic() + GRACE_SECONDS
    running.stop_pollers.set()
    if running.listener is not None:
        # No new connections; the mail in flight is spooled (250) or refused (the client retries).
        code = running.listener.stop()
        if code:
            log.warning("SMTP listener exited with code %s", code)
    # Use the time left to ingest what is spooled; the rest waits safely for the next start.
    left = running.spool_worker.stop(deadline - 2)
    if left:
        log.info("%s spooled mails left for the next start", left)
    if running.sender is not None:
        running.sender.stop(max(deadline - 1.5 - time.monotonic(), 0.1))
    for thread in running.poller_threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0.1))
    if running.scheduler is not None and running.scheduler.running:
        running.scheduler.shutdown(wait=False)
    if running.scanner is not None:
        running.scanner.stop(max(deadline - time.monotonic(), 0.1))
    if running.wakeup_thread is not None:
        # Its socket is closed when it ends: a daemon started next in this process (a test's
        # restart) can take the name, and its writers' pokes reach it.
        running.wakeup_thread.join(max(deadline - time.monotonic(), 1.0))  # it looks every 0.5 s
    log.info("stopped")


def run(app: App) -> None:
    serve(app)
