"""Leases: one worker per named job (an IMAP mailbox) across daemons sharing one database.

PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) held on a connection of the
lease's own, outside the pool. The lock lives exactly as long as that connection: a daemon that
dies, or loses its network, loses the lease when PostgreSQL closes the connection, and the next
daemon's periodic `acquire()` takes it over. (How fast a vanished peer is noticed depends on the
server's `tcp_keepalives_*` settings.)

SQLite: the database is a file on one host, so daemons sharing it share a file system: the lease
is an exclusive `flock` on a lock file beside the database, released by the kernel when the
process dies. An in-memory database has no second daemon and gets a lease that always holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from mailgate.db import advisory_key


class LeaseLost(Exception):
    """Another daemon may now own this job: stop working on it."""


class Lease(Protocol):
    def acquire(self) -> bool:
        """Try to take the lease without waiting; True when held (also when already held)."""

    def held(self) -> bool:
        """Whether the lease is still ours (checks the connection on PostgreSQL)."""

    def release(self) -> None: ...


def make_lease(engine: Engine, name: str) -> Lease:
    """The lease for `name` on the database behind `engine`."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return PgAdvisoryLease(url, name)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db = Path(url.database)
        return FileLease(db.with_name(f"{db.name}.lease-{name.replace(':', '-')}"))
    return _AlwaysHeld()


class PgAdvisoryLease:
    def __init__(self, url: URL, name: str) -> None:
        self.name = name
        self.key = advisory_key(name)
        # NullPool: closing the connection really closes it, and with it the lock.
        self._engine = create_engine(url, poolclass=NullPool)
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        if self.held():
            return True
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar())
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except Exception:  # the connection is gone, and with it the lock
            self._drop()
            return False

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def backend_pid(self) -> int | None:
        """The PostgreSQL backend holding the lock (for tests and diagnostics)."""
        if self._conn is None:
            return None
        return int(self._conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


class FileLease:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock


class _AlwaysHeld:
    def acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass
