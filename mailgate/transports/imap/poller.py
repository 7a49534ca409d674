"""The IMAP poller of one mailbox, running as long as the daemon: rounds (reader.py) on a connection
kept open, IDLE between them, one daemon per mailbox (lease.py), outages logged once, back-off.

The daemon runs one `ImapPoller(app, mailbox).run(stop)` thread per configured mailbox;
`poll_once()` does a single round (tests, CLI).

Between rounds the poller IDLEs where the server offers it (new mail is fetched as soon as the
server reports it), re-checking every `poll_seconds`; without IDLE it polls every `poll_seconds`.
Errors reconnect after a back-off (`retry.IMAP`); an outage is logged once when it starts
(WARNING) and once when it is over (INFO). With several daemons on one database, a lease lets one
poller per mailbox work; the others stand by and take over when it goes away.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy.exc import SQLAlchemyError

from mailgate import retry
from mailgate.app import App
from mailgate.config import ImapMailbox
from mailgate.db import describe
from mailgate.transports.imap import acknowledge
from mailgate.transports.imap.connect import (
    LoginFailed,
    connect,
    folder_name,
    input_already_buffered,
    new_mail_reported,
    reason,
)
from mailgate.transports.imap.lease import Lease, LeaseLost, make_lease
from mailgate.transports.imap.reader import DatabaseUnavailable, MailboxReader, PollReport

log = logging.getLogger("mailgate.imap")

STOP_GRACE_SECONDS = 3.0  # after stop, how long the mail in flight may take before the connection is cut
IDLE_MAX_SECONDS = 25 * 60  # RFC 2177: re-issue IDLE at least every 29 minutes
WAKE_SECONDS = 0.5  # how often a wait looks at the stop event


class ImapPoller:
    def __init__(
        self,
        app: App,
        mailbox: ImapMailbox,
        *,
        lease: Lease | None = None,
        backoff: retry.Backoff = retry.IMAP,
        lease_retry_seconds: float = 15.0,
        lease_check_seconds: float = 10.0,
    ) -> None:
        self.mailbox = mailbox
        self.reader = MailboxReader(app, mailbox)
        self.lease = lease or make_lease(app.engine, f"imap:{mailbox.name}")
        self.backoff = backoff
        self.lease_retry_seconds = lease_retry_seconds
        self.lease_check_seconds = lease_check_seconds
        # What the poller is doing: starting, standby, polling, idle, waiting, backoff, stopped.
        self.state = "starting"
        self._client: IMAPClient | None = None  # connected, logged in, folders in place
        self._open: IMAPClient | None = None  # the connection in use or being set up (for stop)
        self._delimiter: str | None = "/"
        self._told_copies_stay = False
        self._server = _Outage(mailbox.name, "IMAP server", "unavailable")
        self._database = _Outage(mailbox.name, "database", "unavailable")
        self._bug = _Outage(mailbox.name, "poller", "failed unexpectedly", traceback=True)

    @property
    def totals(self) -> dict[str, int]:
        """ingest() outcomes since start: new_ticket, duplicate …"""
        return self.reader.totals

    # Public API -------------------------------------------------------------------------------

    def poll_once(self) -> PollReport:
        """One round on a connection kept for the next call; `close()` ends it."""
        if not self.lease.acquire():
            return PollReport(self.mailbox.name, standby=True)
        try:
            return self._round(self._connected(), threading.Event(), retry_now=True)
        except (IMAPClientError, OSError):
            self._disconnect(clean=False)
            raise

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set; returns within about a second of it (after the mail in flight)."""
        failures = 0  # in a row, for the back-off
        finished = threading.Event()
        threading.Thread(
            target=self._unblock_on_stop, args=(stop, finished), name=f"imap-{self.mailbox.name}-stop", daemon=True
        ).start()
        try:
            while not stop.is_set():
                try:
                    if not self._take_lease(stop):
                        continue
                    client = self._connected()
                    self._server.over()
                    while not stop.is_set():
                        report = self._round(client, stop, retry_now=False)
                        failures = 0
                        if report.handled == 0 and not new_mail_reported(client):
                            self._wait_for_mail(client, stop)
                        if not self.lease.held():
                            raise LeaseLost
                except LeaseLost:
                    log.warning(
                        "imap mailbox=%s: lease lost; standing by until it can be taken again", self.mailbox.name
                    )
                    self._disconnect(clean=False)
                    self.state = "standby"
                except Exception as exc:
                    self._disconnect(clean=False)
                    if stop.is_set():  # e.g. the connection cut to stop: no outage to report
                        break
                    self._outage_for(exc).begin(exc)
                    self.state = "backoff"
                    failures += 1
                    stop.wait(self.backoff.seconds(failures))
        finally:
            self.close()
            finished.set()
            self.state = "stopped"

    def close(self) -> None:
        self._disconnect(clean=True)
        self.lease.release()

    def __enter__(self) -> ImapPoller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Rounds and outages -------------------------------------------------------------------------

    def _round(self, client: IMAPClient, stop: threading.Event, retry_now: bool) -> PollReport:
        self.state = "polling"
        report = self.reader.poll(client, self._delimiter, stop, self.lease, retry_now)
        self._database.over()
        self._bug.over()
        return report

    def _outage_for(self, exc: Exception) -> _Outage:
        if isinstance(exc, DatabaseUnavailable | SQLAlchemyError):
            return self._database
        if isinstance(exc, IMAPClientError | OSError | LoginFailed):
            return self._server
        return self._bug  # a bug: logged with its traceback, retried with back-off

    def _unblock_on_stop(self, stop: threading.Event, finished: threading.Event) -> None:
        """A server that stops answering would hold run() in a socket read for READ_TIMEOUT. Once
        `stop` is set and the mail in flight had STOP_GRACE_SECONDS to finish, cut the connection:
        run() then returns (a mail stored but not yet acknowledged comes again as a duplicate)."""
        while not stop.wait(1.0):
            if finished.is_set():
                return
        if finished.wait(STOP_GRACE_SECONDS):
            return
        client = self._open
        if client is not None:
            log.warning(
                "imap mailbox=%s: the server does not answer; cutting the connection to stop", self.mailbox.name
            )
            with contextlib.suppress(Exception):
                client.socket().shutdown(socket.SHUT_RDWR)

    # Waiting ----------------------------------------------------------------------------------

    def _wait_for_mail(self, client: IMAPClient, stop: threading.Event) -> None:
        """Until the server reports new mail, `poll_seconds` pass, or `stop` is set."""
        box = self.mailbox
        if not (box.idle and client.has_capability("IDLE")):
            self.state = "waiting"
            stop.wait(box.poll_seconds)
            return
        now = time.monotonic()
        deadline = now + min(box.poll_seconds, IDLE_MAX_SECONDS)
        next_lease_check = now + self.lease_check_seconds
        client.idle()
        self.state = "idle"
        woken = input_already_buffered(client)
        while not woken and not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_lease_check:
                if not self.lease.held():
                    raise LeaseLost
                next_lease_check = now + self.lease_check_seconds
            readable, _, _ = select.select([client.socket()], [], [], min(WAKE_SECONDS, deadline - now))
            if not readable:
                continue
            responses = client.idle_check(timeout=0)
            if not responses or any(r[0] == b"BYE" for r in responses if isinstance(r, tuple) and r):
                raise ConnectionError("the server closed the connection during IDLE")
            woken = any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses if isinstance(r, tuple))
        self.state = "polling"
        client.idle_done()

    # Lease and connection -----------------------------------------------------------------------

    def _take_lease(self, stop: threading.Event) -> bool:
        if self.lease.held():
            return True
        try:
            got = self.lease.acquire()
        except Exception as exc:
            raise DatabaseUnavailable(f"cannot take the lease: {describe(exc)}") from exc
        if got:
            if self.state == "standby":
                log.info("imap mailbox=%s: lease taken over; this daemon now polls the mailbox", self.mailbox.name)
            return True
        if self.state != "standby":
            log.info("imap mailbox=%s: another daemon polls this mailbox; standing by", self.mailbox.name)
        self.state = "standby"
        stop.wait(self.lease_retry_seconds)
        return False

    def _connected(self) -> IMAPClient:
        if self._client is None:
            box = self.mailbox
            client, self._delimiter = connect(box, on_open=self._opened)
            try:
                needed = [box.failure_folder] + ([box.move_to] if box.after == "move" else [])
                for folder in needed:
                    name = folder_name(folder, self._delimiter)
                    if not client.folder_exists(name):
                        client.create_folder(name)
                        log.info("imap mailbox=%s: created folder %s", box.name, name)
                self._say_whether_copies_stay(client)
            except BaseException:
                with contextlib.suppress(Exception):
                    client.shutdown()
                raise
            self._client = client
        return self._client

    def _say_whether_copies_stay(self, client: IMAPClient) -> None:
        if self._told_copies_stay or not acknowledge.leaves_copies_behind(client):
            return
        self._told_copies_stay = True
        log.warning(
            "imap mailbox=%s: the server offers neither MOVE nor UIDPLUS: mail moved to %s stays in %s "
            "flagged \\Deleted until a mail client expunges the folder (mailgate never expunges mail it did not flag)",
            self.mailbox.name,
            self.mailbox.move_to if self.mailbox.after == "move" else self.mailbox.failure_folder,
            self.mailbox.folder,
        )

    def _opened(self, client: IMAPClient) -> None:
        self._open = client

    def _disconnect(self, clean: bool) -> None:
        client, self._client, self._open = self._client, None, None
        if client is None:
            return
        try:
            if clean:
                client.logout()
            else:
                client.shutdown()
        except Exception:
            with contextlib.suppress(Exception):
                client.shutdown()


class _Outage:
    """Logs a problem once when it starts (WARNING) and once when it is over (INFO)."""

    def __init__(self, mailbox: str, what: str, problem: str, traceback: bool = False) -> None:
        self.mailbox, self.what, self.problem, self.traceback = mailbox, what, problem, traceback
        self.since: float | None = None

    def begin(self, exc: BaseException) -> None:
        if self.since is not None:
            log.debug("imap mailbox=%s: %s still %s: %s", self.mailbox, self.what, self.problem, reason(exc))
            return
        self.since = time.monotonic()
        log.warning(
            "imap mailbox=%s: %s %s: %s; retrying with back-off, quiet until it is back",
            self.mailbox,
            self.what,
            self.problem,
            reason(exc),
            exc_info=self.traceback,
        )

    def over(self) -> None:
        if self.since is not None:
            log.info("imap mailbox=%s: %s is back after %.0fs", self.mailbox, self.what, time.monotonic() - self.since)
            self.since = None
