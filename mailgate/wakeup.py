"""A background thread that works in rounds: again at once while a round finds work, otherwise
asleep until woken (from any thread), until its next thing is due, or for `idle_seconds`
(another daemon on the same database may have queued work meanwhile).

The thread is a daemon thread: a round stuck at shutdown (a database that stopped answering)
never keeps the process from exiting. What such a round did is committed or done again after
the next start: at least once, never lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime

from mailgate.db import describe

log = logging.getLogger("mailgate")

# One round of work: did it do any (then go again at once), and when is the next thing due.
Round = Callable[[], tuple[bool, datetime | None]]


class Worker:
    def __init__(
        self, name: str, one_round: Round, idle_seconds: float, now: Callable[[], datetime], niceness: int
    ) -> None:
        self.name = name
        self.niceness = niceness  # background_niceness in the config
        self.one_round = one_round
        self.idle_seconds = idle_seconds
        self.now = now  # the clock the rounds' due times are on
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def wake_up(self) -> None:
        """Look for work now; safe from any thread, cheap to call often."""
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the round in progress, then end; join() waits for that."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> bool:
        """Whether the thread ended within `timeout` seconds."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        _yield_the_cpu(self.niceness)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                busy, next_due = self.one_round()
            except Exception as exc:  # the database is down …: logged, tried again later
                log.warning("%s round failed, trying again later: %s", self.name, describe(exc))
                busy, next_due = False, None
            if busy:
                continue
            delay = self.idle_seconds
            if next_due is not None:
                delay = min(delay, max((next_due - self.now()).total_seconds(), 0.05))
            self._wake.wait(delay)


def _yield_the_cpu(niceness: int) -> None:
    """Background work runs at niceness `niceness` (by default 19; Linux sets it per thread):
    under a flood, the SMTP listener, whose clients wait for each answer, gets the CPU first, and
    what it accepted waits safely in the spool meanwhile (bench/smtp.py: see README). Never below
    the daemon's own niceness: the background must not go before the listener."""
    thread = threading.get_native_id()
    try:
        own = os.getpriority(os.PRIO_PROCESS, thread)  # inherited from the daemon
    except (AttributeError, OSError):  # not Linux
        return
    if niceness < own:
        if niceness:
            log.warning("background_niceness %d is below the daemon's niceness %d: using %d", niceness, own, own)
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread, niceness)
