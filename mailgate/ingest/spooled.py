"""The spool's worker: mail waiting in the spool directory goes through ingest(), oldest first.

A mail leaves the spool only after ingest() committed it (or quarantine took it). Each try is
counted before it starts (see spool.Spool.claim), so a mail whose ingest kills the process
reaches quarantine after `spool.max_attempts` tries instead of being retried forever. When the
database itself is unreachable or locked, that is nobody's mail's fault: the attempt is given
back and the worker waits (retry.SPOOL) before it tries again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from mailgate import journal, quarantine, retry
from mailgate.app import App
from mailgate.clock import Clock, SystemClock
from mailgate.db import describe, reader
from mailgate.ingest.pipeline import TemporaryFailure, ingest
from mailgate.legacy_spool import drain_legacy_spool
from mailgate.spool import Claimed, Spool, Unreadable
from mailgate.wakeup import Worker

log = logging.getLogger("mailgate.spool")

_DATABASE_ERRORS = (OperationalError, InterfaceError, DisconnectionError)


@dataclass
class DrainReport:
    stored: int = 0
    retried: int = 0
    quarantined: int = 0
    # The database is unavailable: the round stopped early; try again at this time.
    outage_until: datetime | None = None


def drain(app: App, spool: Spool, limit: int = 50, outages: int = 0, clock: Clock | None = None) -> DrainReport:
    """Ingest up to `limit` due mails. `outages`: rounds in a row that found the database
    unavailable, for the back-off. `clock` times the retries: the wall clock, whatever clock
    the app dates tickets with (tests move that one)."""
    clock = clock or SystemClock()
    report = DrainReport()
    max_attempts = app.settings.spool.max_attempts
    for name in spool.due(clock.now())[:limit]:
        try:
            claimed = spool.claim(name)
        except Unreadable as exc:
            log.error("spool %s cannot be read by this daemon, moved aside: %s", name.base, exc)
            continue
        if claimed is None:
            continue
        if claimed.envelope is None or claimed.name.attempts > max_attempts:
            if not _give_up(app, spool, claimed, max_attempts):
                report.outage_until = clock.now() + retry.SPOOL.delay(outages + 1)
                break
            report.quarantined += 1
            continue
        envelope = claimed.envelope
        try:
            ingest(
                app,
                claimed.raw,
                envelope.source,
                envelope.recipients,
                envelope.sender,
                received_at=envelope.received_at,
            )
        except TemporaryFailure as exc:
            now = clock.now()
            if _database_unavailable(app, exc):
                # Every other mail would fail alike: stop the round, keep the attempt unspent.
                report.outage_until = now + retry.SPOOL.delay(outages + 1)
                spool.retry(claimed.name, str(exc), report.outage_until, count=False)
                log.info("spool %s: the database is unavailable (%s); trying again soon", name.base, exc)
                break
            due = now + retry.SPOOL.delay(claimed.name.attempts)
            spool.retry(claimed.name, str(exc), due)
            report.retried += 1
            log.warning(
                "spool %s: not stored (attempt %d of %d): %s",
                name.base,
                claimed.name.attempts,
                max_attempts,
                exc,
            )
            continue
        except Exception as exc:  # a bug this mail hits: counted like a failure of its own
            spool.retry(
                claimed.name, f"{type(exc).__name__}: {exc}", clock.now() + retry.SPOOL.delay(claimed.name.attempts)
            )
            report.retried += 1
            log.exception("spool %s: ingest failed unexpectedly (attempt %d)", name.base, claimed.name.attempts)
            continue
        spool.done(claimed.name)
        report.stored += 1
    return report


# PostgreSQL's SQLSTATEs for "the database cannot take anything now", whatever the mail:
# connection (08), resources such as a full disk (53), operator intervention and statement
# timeouts (57), system errors (58), a read-only standby after a failover (25006), a lock not
# granted (55P03), a table missing during a migration (42P01), serialization and deadlocks.
_PG_OUTAGE_CLASSES = ("08", "53", "57", "58")
_PG_OUTAGE_STATES = ("25006", "55P03", "42P01", "40001", "40P01")
# SQLite's: the lock not granted in time, a full or failing disk, a read-only or missing file.
_SQLITE_OUTAGES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")


def _database_unavailable(app: App, exc: BaseException) -> bool:
    """Whether the failure was the database's or the disk's rather than this mail's. Only the
    mail's own failures count against it: an outage must never send mail to quarantine."""
    causes = []
    cause: BaseException | None = exc.__cause__
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__
    for failure in causes:
        if isinstance(failure, OSError):  # the attachment store's disk
            return True
        orig = getattr(failure, "orig", None)
        state = getattr(orig, "sqlstate", None) or ""
        if state.startswith(_PG_OUTAGE_CLASSES) or state in _PG_OUTAGE_STATES:
            return True
        if getattr(orig, "sqlite_errorname", "") in _SQLITE_OUTAGES or "no such table" in str(orig or ""):
            return True
    if not any(isinstance(c, _DATABASE_ERRORS) for c in causes):
        return False
    try:  # an error of another kind while the database does not even answer (a reader: no lock)
        with reader(app.engine).connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception:
        return True
    return False


def _give_up(app: App, spool: Spool, claimed: Claimed, max_attempts: int) -> bool:
    """Into quarantine with its bytes and why; False if the database cannot take it now."""
    if claimed.envelope is None:
        reason, source = "a spool file without an envelope line (not written by mailgate?)", "spool"
    else:
        last = spool.notes_for(claimed.name) or "the process ended while ingesting it"
        reason = f"not stored after {max_attempts} attempts; the last: {last}"
        source = claimed.envelope.source
    try:
        sender, recipients = (claimed.envelope.sender, claimed.envelope.recipients) if claimed.envelope else (None, ())
        quarantine.put(app, claimed.raw, source, reason, app.clock.now(), sender, recipients)
    except TemporaryFailure:
        # The note keeps the reason it is going to quarantine for.
        spool.retry(claimed.name, spool.notes_for(claimed.name), SystemClock().now(), count=False)
        return False
    spool.done(claimed.name)
    log.error("spool %s quarantined: %s", claimed.name.base, reason)
    return True


class SpoolWorker:
    """Drains the spool on a thread of its own: woken by every writer (the listener, `mailgate
    ingest`) through the spool's wake-up socket, and at least every IDLE_SECONDS."""

    IDLE_SECONDS = 10.0

    def __init__(self, app: App, spool: Spool, clock: Clock | None = None, *, legacy: bool = False) -> None:
        self.app = app
        self.spool = spool
        # Mail an earlier release left in its database spool is still to be moved in (once).
        self._legacy = legacy
        self.clock = clock or SystemClock()
        self.worker = Worker(
            "mailgate-ingest", self._round, self.IDLE_SECONDS, self.clock.now, app.settings.background_niceness
        )
        self.wake_up = self.worker.wake_up
        self._outages = 0
        self._outage_until: datetime | None = None

    def _round(self) -> tuple[bool, datetime | None]:
        if self._outage_until is not None and self.clock.now() < self._outage_until:
            # Mail keeps arriving and waking us: the database is not back any sooner for it.
            return False, self._outage_until
        if self._legacy:
            try:
                drain_legacy_spool(self.app.settings, self.spool)
                self._legacy = False
            except Exception as exc:  # the database is down: next round; the spool is tried anyway
                log.info("the old database spool is not reachable yet: %s", describe(exc))
        report = drain(self.app, self.spool, outages=self._outages, clock=self.clock)
        self._outage_until = report.outage_until
        if report.outage_until is not None:
            if not self._outages:
                log.warning("the database is unavailable: accepted mail waits in the spool %s", self.spool.root)
            self._outages += 1
            return False, report.outage_until
        if self._outages:
            log.warning("the database is back after %d tries: ingesting the spool", self._outages)
        self._outages = 0
        self._retire_journal()
        if report.stored or report.quarantined or report.retried:
            return True, None  # there may be more waiting
        return False, self.spool.next_due()

    def _retire_journal(self) -> None:
        # A stat per closed segment: cheap enough for every round.
        with contextlib.suppress(OSError):  # kept a while longer; the next round tries again
            journal.retire(self.spool)

    def stop(self, deadline: float) -> int:
        """At shutdown: let the round in progress end, ingest what is spooled until `deadline`
        (time.monotonic()), and return how many mails are left, safe for the next start."""
        self.worker.stop()
        if self.worker.join(max(deadline - time.monotonic(), 0.1)):
            while time.monotonic() < deadline and drain(self.app, self.spool, 5, clock=self.clock).stored:
                pass
        return self.spool.count()
