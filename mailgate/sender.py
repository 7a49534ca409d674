"""The outbox sender: delivers queued mail as soon as it is queued, and retries what is due.

It sleeps until woken (ingest() queued something) or until the next retry is due, so an
acknowledgement leaves within a second, not at the next minute.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Executor
from datetime import datetime

from sqlalchemy import func, select

from mailgate.app import App
from mailgate.models import Outbox, OutboxState
from mailgate.outbox import FlushReport, Transport, deliver_due
from mailgate.wakeup import Wakeup, work_loop

IDLE_SECONDS = 30.0  # look again at least this often (another daemon may have queued mail)


class Sender:
    def __init__(self, app: App, transport: Transport, executor: Executor) -> None:
        self.app = app
        self.transport = transport
        self.executor = executor
        # Deliver now: safe from any thread (the ingest worker and IMAP pollers run in their own).
        self.wake_up = Wakeup()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await work_loop(self.wake_up, stop, self.executor, self._round, self.app.clock.now, IDLE_SECONDS, "outbox")
        finally:
            # Not awaited: behind a round still running (a relay that stopped answering), waiting
            # would hold up the shutdown. The connection is closed when that round ends.
            with contextlib.suppress(RuntimeError):  # the executor is shut down already
                asyncio.get_running_loop().run_in_executor(self.executor, self.transport.close)

    def _round(self) -> tuple[bool, datetime | None]:
        try:
            report, next_due = self._deliver()
        except BaseException:
            self.transport.close()
            raise
        busy = bool(report.sent + report.retried + report.dead)
        if not busy:
            self.transport.close()  # nothing more for now: no idle connection for the relay to drop
        return busy, next_due

    def _deliver(self) -> tuple[FlushReport, datetime | None]:
        settings = self.app.settings
        with self.app.sessions() as session:
            report = deliver_due(
                session, self.transport, self.app.clock.now(), settings.outgoing.max_attempts, limit=50
            )
            next_due = session.scalar(
                select(func.min(Outbox.next_attempt_at)).where(Outbox.state == OutboxState.QUEUED)
            )
        return report, next_due
