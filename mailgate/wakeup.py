"""A loop that sleeps until there is work: woken from any thread, or after a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime

from mailgate.db import describe

log = logging.getLogger("mailgate")

# One round of work: did it do any (then go again at once), and when is the next thing due.
Round = Callable[[], tuple[bool, datetime | None]]


class Wakeup:
    """An asyncio event that any thread may set (IMAP pollers, the listener's pipe reader)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> None:
        """Call from the loop that will wait; wake-ups before this are not needed (it looks first)."""
        self._loop = asyncio.get_running_loop()

    def __call__(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._event.is_set():
            # Already set: the loop has not yet started the round that will see this work (it
            # clears the event first). Under a burst this saves a thread switch per mail.
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            self._event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown): nobody waits
                loop.call_soon_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, stop: asyncio.Event, timeout: float) -> None:
        """Until woken, `stop` is set, or `timeout` seconds passed."""
        waiters = [asyncio.ensure_future(self._event.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


async def work_loop(
    wake_up: Wakeup,
    stop: asyncio.Event,
    executor: Executor,
    one_round: Round,
    now: Callable[[], datetime],
    idle_seconds: float,
    what: str,
) -> None:
    """Run `one_round` on `executor` until `stop`: again at once while it finds work, otherwise
    after a wake-up, at the next due time, or after `idle_seconds` (another daemon may have
    queued work). A failing round (the database is down) is logged and tried again later."""
    wake_up.bind()
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        wake_up.clear()
        next_due = None
        try:
            busy, next_due = await loop.run_in_executor(executor, one_round)
            if busy:
                continue
        except Exception as exc:
            log.warning("%s round failed, trying again later: %s", what, describe(exc))
        delay = idle_seconds
        if next_due is not None:
            delay = min(delay, max((next_due - now()).total_seconds(), 0.05))
        await wake_up.wait(stop, timeout=delay)
