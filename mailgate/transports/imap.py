"""IMAP poller: new mail in a mailbox -> ingest(), then move or flag it, only after the commit.

The daemon runs one `ImapPoller(app, mailbox).run(stop)` thread per configured mailbox;
`poll_once()` does a single round (tests, CLI). A round:

1. SELECT the folder. A UIDVALIDITY other than the stored one (the server renumbered the folder)
   resets the stored position to 0: everything is looked at again, and ingest()'s dedupe turns
   mail stored before into "duplicate", which is then moved/flagged like any other.
2. Candidates: with `after = "move"` every message still in the folder (what we processed is
   gone); with `after = "flag"` the UNSEEN ones plus every UID above the stored position, so mail
   a person opened in a client before we fetched it is not skipped.
3. Fetch in batches (BODY.PEEK[]: reading flags nothing), ingest() each mail, and only after its
   commit move it to `move_to` or flag it \\Seen. A TemporaryFailure leaves the mail in place for
   a retry after `poll_seconds`; after `max_failures` failures it is moved to `failure_folder`
   (never deleted). Failures are counted in memory: a restart gives a failing mail
   `max_failures` new attempts.
   While the database itself is unreachable, failures are not counted against the mail.
4. Store UIDVALIDITY and the position (the highest UID below which everything is done) after
   each batch.

Between rounds the poller IDLEs where the server offers it (new mail is fetched as soon as the
server reports it), re-checking every `poll_seconds`; without IDLE it polls every `poll_seconds`.
Errors reconnect with exponential back-off; an outage is logged once when it starts (WARNING)
and once when it is over (INFO). With several daemons on one database, a lease (see lease.py)
lets one poller per mailbox work; the others stand by and take over when it goes away.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import logging
import random
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from imapclient import DELETED, SEEN, IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import select as sql_select
from sqlalchemy.exc import SQLAlchemyError

from mailgate.app import App
from mailgate.config import ImapMailbox
from mailgate.ingest.pipeline import TemporaryFailure, describe, ingest
from mailgate.models import MailboxState
from mailgate.transports.imap_connect import (
    LoginFailed,
    check_mailbox,
    connect,
    folder_name,
    input_already_buffered,
    new_mail_reported,
    reason,
)
from mailgate.transports.lease import Lease, make_lease

__all__ = ["ImapPoller", "PollReport", "check_mailbox"]

log = logging.getLogger("mailgate.imap")

BATCH_MESSAGES = 100
BATCH_BYTES = 64 * 1024 * 1024  # a batch of big mails is cut short to bound memory
SIZE_QUERY_UIDS = 1000  # UIDs per FETCH RFC822.SIZE: keeps command lines short
STOP_GRACE_SECONDS = 3.0  # after stop, how long the mail in flight may take before the connection is cut
IDLE_MAX_SECONDS = 25 * 60  # RFC 2177: re-issue IDLE at least every 29 minutes
WAKE_SECONDS = 0.5  # how often a wait looks at the stop event


class DatabaseUnavailable(Exception):
    """The database cannot be reached: not the mail's fault; the round ends and retries later."""


class LeaseLost(Exception):
    """Another daemon may now own this mailbox: stop working on it."""


@dataclass
class PollReport:
    """What one round did."""

    mailbox: str
    candidates: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # ingest() outcomes: new_ticket, duplicate …
    failed: int = 0  # temporary failures; the mail stays for the next round
    to_failure_folder: int = 0
    uidvalidity_reset: bool = False
    standby: bool = False  # another daemon holds this mailbox's lease; nothing was done
    stopped: bool = False  # stop was set before every candidate was handled

    @property
    def handled(self) -> int:
        return sum(self.outcomes.values())


class ImapPoller:
    def __init__(
        self,
        app: App,
        mailbox: ImapMailbox,
        *,
        lease: Lease | None = None,
        lease_retry_seconds: float = 15.0,
        lease_check_seconds: float = 10.0,
        backoff_start: float = 1.0,
        backoff_cap: float = 300.0,
    ) -> None:
        self.app = app
        self.mailbox = mailbox
        self.source = f"imap:{mailbox.name}"
        self.lease = lease or make_lease(app.engine, f"imap:{mailbox.name}")
        self.lease_retry_seconds = lease_retry_seconds
        self.lease_check_seconds = lease_check_seconds
        self.backoff_start = backoff_start
        self.backoff_cap = backoff_cap
        # What the poller is doing: starting, standby, polling, idle, waiting, backoff, stopped.
        self.state = "starting"
        self.totals: Counter[str] = Counter()  # ingest() outcomes since start
        self._client: IMAPClient | None = None  # connected, logged in, folders in place
        self._open: IMAPClient | None = None  # the connection in use or being set up (for stop)
        self._delimiter: str | None = "/"
        # (uidvalidity, uid) -> failed attempts, and when (time.monotonic()) it may be tried again
        self._failures: dict[tuple[int, int], tuple[int, float]] = {}
        self._flagged: set[tuple[int, int]] = set()  # flagged by us, above the stored position
        self._server = _Outage(mailbox.name, "IMAP server", "unavailable")
        self._database = _Outage(mailbox.name, "database", "unavailable")
        self._bug = _Outage(mailbox.name, "poller", "failed unexpectedly", traceback=True)

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
        backoff = self.backoff_start
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
                    backoff = self.backoff_start
                    while not stop.is_set():
                        report = self._round(client, stop, retry_now=False)
                        self._bug.over()
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
                    stop.wait(backoff * random.uniform(0.8, 1.0))
                    backoff = min(backoff * 2, self.backoff_cap)
        finally:
            self.close()
            finished.set()
            self.state = "stopped"

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

    def close(self) -> None:
        self._disconnect(clean=True)
        self.lease.release()

    def __enter__(self) -> ImapPoller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # One round --------------------------------------------------------------------------------

    def _round(self, client: IMAPClient, stop: threading.Event, retry_now: bool) -> PollReport:
        """Handle the candidates. A mail that failed is tried again after `poll_seconds` (or at
        once with `retry_now`), not in every round a burst of new mail brings."""
        box = self.mailbox
        report = PollReport(box.name)
        self.state = "polling"
        selected = client.select_folder(self._folder(box.folder))
        uidvalidity = int(selected[b"UIDVALIDITY"])
        position = self._load_position(uidvalidity, report)
        self._database.over()
        uids = self._candidates(client, uidvalidity, position)
        present = set(uids)  # forget failures of mail that is gone (moved away by a person)
        self._failures = {k: v for k, v in self._failures.items() if k[0] == uidvalidity and k[1] in present}
        if not retry_now:
            now = time.monotonic()
            later = {uid for uid in uids if self._failures.get((uidvalidity, uid), (0, 0.0))[1] > now}
            uids = [uid for uid in uids if uid not in later]
        else:
            later = set()
        report.candidates = len(uids)
        # The position never passes a mail that failed: it stops below the first one.
        blocked = False
        cap = min((uid for uid in later if uid > position), default=None)
        for batch in _batches(client, uids):
            fetched = client.fetch(batch, ["BODY.PEEK[]"])
            for uid in batch:
                if stop.is_set():
                    report.stopped = True
                    break
                raw = fetched.get(uid, {}).get(b"BODY[]")
                if raw is None:  # expunged by someone else in the meantime
                    continue
                if self._handle(client, uidvalidity, uid, raw, report):
                    if not blocked and (cap is None or uid < cap):
                        position = max(position, uid)
                elif uid > position:
                    blocked = True
            self._save_position(uidvalidity, position)
            self._flagged = {k for k in self._flagged if k[0] == uidvalidity and k[1] > position}
            if report.stopped:
                break
            if not self.lease.held():
                raise LeaseLost
        return report

    def _candidates(self, client: IMAPClient, uidvalidity: int, position: int) -> list[int]:
        if self.mailbox.after == "move":
            return sorted(client.search(["NOT", "DELETED"]))
        unseen = set(client.search(["UNSEEN", "NOT", "DELETED"]))
        # "n:*" always matches the highest UID, even below n: hence the filter.
        newer = {uid for uid in client.search(["UID", f"{position + 1}:*", "NOT", "DELETED"]) if uid > position}
        return sorted(uid for uid in unseen | newer if (uidvalidity, uid) not in self._flagged)

    def _handle(self, client: IMAPClient, uidvalidity: int, uid: int, raw: bytes, report: PollReport) -> bool:
        """Ingest one mail and acknowledge it; False when it stays for the next round."""
        box = self.mailbox
        try:
            result = ingest(self.app, raw, self.source)
        except TemporaryFailure as exc:
            self._check_database()  # raises when the database is down: not this mail's fault
            key = (uidvalidity, uid)
            count = self._failures.get(key, (0, 0.0))[0] + 1
            self._failures[key] = (count, time.monotonic() + box.poll_seconds)
            report.failed += 1
            if count < box.max_failures:
                log.warning(
                    "imap mailbox=%s uid=%d msgid=%s: ingest failed (%d of %d), left for the next round: %s",
                    box.name,
                    uid,
                    _message_id(raw),
                    count,
                    box.max_failures,
                    exc,
                )
                return False
            self._move(client, uid, box.failure_folder)
            del self._failures[key]
            report.to_failure_folder += 1
            log.error(
                "imap mailbox=%s uid=%d msgid=%s: ingest failed %d times, moved to %s: %s",
                box.name,
                uid,
                _message_id(raw),
                count,
                box.failure_folder,
                exc,
            )
            return True
        self._failures.pop((uidvalidity, uid), None)
        if box.after == "move":
            self._move(client, uid, box.move_to)
            done = f"moved to {box.move_to}"
        else:
            client.add_flags([uid], [SEEN], silent=True)
            self._flagged.add((uidvalidity, uid))
            done = "flagged \\Seen"
        report.outcomes[result.outcome] += 1
        self.totals[result.outcome] += 1
        log.info(
            "imap mailbox=%s uid=%d msgid=%s outcome=%s ticket=%s: %s",
            box.name,
            uid,
            f"<{result.message_id}>" if result.message_id else "-",
            result.outcome,
            result.ticket_number,
            done,
        )
        return True

    def _move(self, client: IMAPClient, uid: int, folder: str) -> None:
        target = self._folder(folder)
        if client.has_capability("MOVE"):
            client.move([uid], target)
            return
        client.copy([uid], target)
        client.add_flags([uid], [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge([uid])
        else:
            client.expunge()

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

    # Lease, connection, credentials -------------------------------------------------------------

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
            except BaseException:
                with contextlib.suppress(Exception):
                    client.shutdown()
                raise
            self._client = client
        return self._client

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

    def _folder(self, name: str) -> str:
        return folder_name(name, self._delimiter)

    # Stored position -----------------------------------------------------------------------------

    def _load_position(self, uidvalidity: int, report: PollReport) -> int:
        name = self.mailbox.name
        try:
            with self.app.sessions() as session, session.begin():
                row = session.scalar(sql_select(MailboxState).where(MailboxState.name == name))
                if row is None:
                    session.add(MailboxState(name=name, uidvalidity=uidvalidity, last_uid=0, updated_at=self._now()))
                    return 0
                if row.uidvalidity != uidvalidity:
                    if row.uidvalidity is not None:
                        report.uidvalidity_reset = True
                        log.warning(
                            "imap mailbox=%s: UIDVALIDITY changed %s -> %s: looking at every mail again "
                            "(mail stored before counts as duplicate)",
                            name,
                            row.uidvalidity,
                            uidvalidity,
                        )
                    row.uidvalidity, row.last_uid, row.updated_at = uidvalidity, 0, self._now()
                return row.last_uid
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    def _save_position(self, uidvalidity: int, position: int) -> None:
        try:
            with self.app.sessions() as session, session.begin():
                row = session.scalar(sql_select(MailboxState).where(MailboxState.name == self.mailbox.name))
                if row is None:
                    row = MailboxState(name=self.mailbox.name)
                    session.add(row)
                row.uidvalidity, row.last_uid, row.updated_at = uidvalidity, position, self._now()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    def _check_database(self) -> None:
        try:
            with self.app.sessions() as session:
                session.execute(sql_select(MailboxState.id).limit(1))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    def _now(self) -> datetime:
        return self.app.clock.now()


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


def _batches(client: IMAPClient, uids: Sequence[int]) -> Iterator[list[int]]:
    """Up to BATCH_MESSAGES UIDs per batch, fewer when their sizes add up to BATCH_BYTES."""
    sizes: dict[int, int] = {}
    for start in range(0, len(uids), SIZE_QUERY_UIDS):
        chunk = list(uids[start : start + SIZE_QUERY_UIDS])
        for uid, data in client.fetch(chunk, ["RFC822.SIZE"]).items():
            sizes[uid] = int(data.get(b"RFC822.SIZE", 0))
    batch: list[int] = []
    total = 0
    for uid in uids:
        if uid not in sizes:  # gone since the search
            continue
        if batch and (len(batch) >= BATCH_MESSAGES or total + sizes[uid] > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += sizes[uid]
    if batch:
        yield batch


def _message_id(raw: bytes) -> str:
    """The Message-ID for a log line about a mail ingest() could not store."""
    try:
        value = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw).get("Message-ID")
    except Exception:
        return "-"
    return str(value).strip() if value else "-"
