"""One retry policy for everything that tries again: the spool, the outbox and the IMAP poller.

Exponential back-off from `first` seconds, doubling per failure, never longer than `cap`: an
outage of minutes costs minutes, a dead peer is not hammered. Optional jitter spreads the
retries of several daemons that failed at the same moment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Backoff:
    first: float  # seconds to wait after the first failure
    cap: float  # never longer than this between two attempts
    jitter: float = 0.0  # 0.2: each wait is 80-100% of the computed one

    def seconds(self, failures: int) -> float:
        """How long to wait after `failures` failures in a row (1 for the first)."""
        # The exponent is bounded: after a thousand failures 2**n would overflow a float.
        wait = min(self.first * 2 ** min(max(failures - 1, 0), 64), self.cap)
        if self.jitter:
            wait *= random.uniform(1 - self.jitter, 1.0)
        return wait

    def delay(self, failures: int) -> timedelta:
        return timedelta(seconds=self.seconds(failures))


# The spool: a mail that could not be stored yet (the database is down) is tried again soon.
SPOOL = Backoff(first=1, cap=30)
# The outbox: a relay that refuses for now is asked again after 1, 2, 4 … minutes, at most 6 h.
OUTBOX = Backoff(first=60, cap=6 * 3600)
# The IMAP poller reconnecting to a server that went away.
IMAP = Backoff(first=1, cap=300, jitter=0.2)
