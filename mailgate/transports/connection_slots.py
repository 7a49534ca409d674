"""The listener's connection slots: so many in all, and so many for one client address.

With one limit for all, a client that holds every slot (idle connections kept alive with NOOP)
locks everyone else out; a share per address leaves the others room.
"""

from __future__ import annotations

from collections import Counter

BUSY = "421 4.7.0 Too many connections, try again later"
BUSY_FOR_CLIENT = "421 4.7.0 Too many connections from your address, try again later"


class ConnectionSlots:
    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.held = 0
        self._by_client: Counter[str] = Counter()

    def take(self, client: str) -> str | None:
        """None if `client` may have one more connection (it is counted); else the reply that
        refuses it."""
        if self.held >= self.total:
            return BUSY
        if self._by_client[client] >= self.per_client:
            return BUSY_FOR_CLIENT
        self.held += 1
        self._by_client[client] += 1
        return None

    def give_back(self, client: str) -> None:
        self.held -= 1
        self._by_client[client] -= 1
        if not self._by_client[client]:
            del self._by_client[client]
