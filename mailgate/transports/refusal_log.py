"""Refusals logged once per client and minute, with a count of the repeats.

A client that is refused again and again (20,000 unknown recipients, password guesses, one
connection too many) would otherwise write a log line each time: the log fills and the lines
that matter drown. The first refusal of a kind from a client is logged at once; the ones that
follow within the minute are counted and reported in one line when the minute is over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailgate.clock import Clock

WINDOW = timedelta(minutes=1)


@dataclass
class _Window:
    started: datetime
    level: int
    repeats: int = 0
    last: str = ""


class RefusalLog:
    def __init__(self, log: logging.Logger, clock: Clock) -> None:
        self.log = log
        self.clock = clock
        self._open: dict[tuple[str, str], _Window] = {}

    def refused(self, client: str, kind: str, detail: str, level: int = logging.INFO) -> None:
        """`kind` names what was refused, as a plural ("refused recipients"); `detail` is this
        one ("refused recipient x@example.org"). Both must be safe to print."""
        self.report_due()
        window = self._open.get((client, kind))
        if window is None:
            self._open[client, kind] = _Window(self.clock.now(), level)
            self.log.log(level, "%s from %s", detail, client)
        else:
            window.repeats += 1
            window.last = detail

    def report_due(self) -> None:
        """Report the repeats of every minute that is over. A client still at it keeps its
        window, so it gets one line a minute and no more."""
        now = self.clock.now()
        for key, window in list(self._open.items()):
            if now - window.started < WINDOW:
                continue
            if not window.repeats:
                del self._open[key]
                continue
            client, kind = key
            seconds = int((now - window.started).total_seconds())
            self.log.log(
                window.level,
                "%d more %s from %s in the last %d s (the last: %s)",
                window.repeats,
                kind,
                client,
                seconds,
                window.last,
            )
            self._open[key] = _Window(now, window.level)
