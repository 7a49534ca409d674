"""Mail the SMTP listener spooled goes through ingest() here, one row at a time.

Each row is deleted only after ingest() committed it. A temporary failure (the database is
down) offers the row again with back-off; a mail that keeps failing goes to quarantine with its
raw bytes and the last error, where `mailgate quarantine retry` can take it up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime

from mailgate.app import App
from mailgate.db import sync_to_disk
from mailgate.ingest.pipeline import TemporaryFailure, ingest, quarantine
from mailgate.spool import Spool, Taken
from mailgate.wakeup import Wakeup, work_loop

log = logging.getLogger("mailgate.spool")

# Temporary failures before the mail goes to quarantine: with the spool's back-off (at most an
# hour between attempts) about a day, longer than a database outage should last.
MAX_ATTEMPTS = 36


@dataclass
class DrainReport:
    stored: int = 0
    retried: int = 0
    quarantined: int = 0

    @property
    def taken(self) -> int:
        return self.stored + self.retried + self.quarantined


def drain(app: App, spool: Spool, limit: int = 20) -> DrainReport:
    """Ingest up to `limit` due spooled mails, oldest first."""
    report = DrainReport()
    stored: list[int] = []
    entries = spool.take(limit)
    settled: set[int] = set()  # stored, retried later or quarantined: the rest goes back
    try:
        for entry in entries:
            try:
                ingest(
                    app,
                    entry.raw,
                    entry.source,
                    entry.envelope_recipients,
                    entry.envelope_sender,
                    received_at=entry.received_at,
                )
            except TemporaryFailure as exc:
                if entry.attempts + 1 >= MAX_ATTEMPTS and _give_up(app, spool, entry, str(exc)):
                    report.quarantined += 1
                    settled.add(entry.id)
                    continue
                due = spool.failed(entry, str(exc))
                settled.add(entry.id)
                log.warning(
                    "spool id=%s not stored yet (%s); again at %s", entry.id, exc, due.isoformat(timespec="seconds")
                )
                report.retried += 1
                continue
            stored.append(entry.id)
            settled.add(entry.id)
            report.stored += 1
    finally:
        # A round cut short (the spool itself failed): what it claimed and did not settle is due
        # again at once rather than when the claim runs out, ten minutes from now.
        unsettled = [entry.id for entry in entries if entry.id not in settled]
        if unsettled:
            with contextlib.suppress(Exception):  # the spool is down: the claim runs out instead
                spool.release(*unsettled)
        # The stored mails must be on disk before their spool rows go (the worker's commits are
        # not synced one by one, see SpoolWorker); then one write for the batch. Rows of a
        # crashed batch come back, and dedupe makes them no-ops.
        if stored:
            sync_to_disk(app.engine)
        spool.done(*stored)
    return report


def _give_up(app: App, spool: Spool, entry: Taken, error: str) -> bool:
    reason = f"could not be stored after {entry.attempts + 1} attempts: {error}"
    try:
        quarantine(app, entry.raw, entry.source, reason, app.clock.now())
    except TemporaryFailure:
        return False  # the quarantine lives in the same database: the row waits in the spool
    sync_to_disk(app.engine)
    spool.done(entry.id)
    log.error("spool id=%s quarantined: %s", entry.id, reason)
    return True


class SpoolWorker:
    """Drains the spool on its own thread: woken by the listener for each mail, and at least
    every IDLE_SECONDS (another daemon's listener may share a PostgreSQL spool)."""

    IDLE_SECONDS = 10.0

    def __init__(self, app: App, spool: Spool, executor: Executor) -> None:
        self.app = app
        self.spool = spool
        self.executor = executor
        self.wake_up = Wakeup()

    async def run(self, stop: asyncio.Event) -> None:
        await work_loop(
            self.wake_up, stop, self.executor, self._round, self.spool.clock.now, self.IDLE_SECONDS, "spool"
        )

    def _round(self) -> tuple[bool, datetime | None]:
        report = drain(self.app, self.spool)
        if report.stored or report.quarantined:
            return True, None  # there may be more waiting
        return False, self.spool.next_due()

    async def finish(self, deadline: float) -> int:
        """At shutdown: ingest what is spooled until `deadline` (loop time); returns what is left.
        What is left is safe in the spool and taken at the next start."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                # Bounded: a round still running on the executor would make this wait for it.
                job = loop.run_in_executor(self.executor, drain, self.app, self.spool, 5)
                report = await asyncio.wait_for(job, timeout=deadline - loop.time())
            except Exception:
                break
            if not report.stored:
                break
        try:
            job = loop.run_in_executor(self.executor, self.spool.count)
            return await asyncio.wait_for(job, timeout=max(deadline - loop.time(), 0.2))
        except Exception:
            return -1
