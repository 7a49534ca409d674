"""A loop that sleeps until there is work: woken from any thread, or after a timeout."""

from __future__ import annotations

import asyncio


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
        if loop is None or loop.is_closed():
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            self._event.set()
        else:
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
