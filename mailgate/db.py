"""Engine and sessions: SQLite in WAL mode by default, PostgreSQL by URL; migrations by alembic."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mailgate.resources import alembic_dir


def make_engine(url: str, *, synced: bool = True, pre_ping: bool = True) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and foreign keys.

    synced=False: SQLite commits are not synced to disk one by one; the caller makes them
    durable with sync_to_disk() before it lets go of the mail elsewhere (see ingest/spooled.py).
    pre_ping=False: a pooled PostgreSQL connection is not tested (a round trip) at each checkout.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, synchronous="FULL" if synced else "NORMAL"))
        file = Path(parsed.database) if parsed.database and parsed.database != ":memory:" else None
        _WRITERS[engine] = _WriterQueue(file)
        _WRITERS[engine].attach(engine)
        return engine
    return create_engine(url, pool_pre_ping=pre_ping)


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object, synchronous: str) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer. FULL syncs the WAL at every commit: a commit
    # is what lets the listener answer 250, the IMAP poller move the mail away and `mailgate
    # ingest` exit 0, so it must survive a power cut, not only a crash of the process (NORMAL).
    # It costs about a quarter of a millisecond per commit here.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (see below).
    dbapi_connection.isolation_level = None


class _WriterQueue:
    """One transaction at a time per SQLite engine, queued in Python.

    Every transaction takes the write lock at BEGIN (BEGIN IMMEDIATE): one that read first and
    wrote later could otherwise fail with SQLITE_BUSY when another writer committed in between
    (the busy timeout does not cover that case). Threads of this process wait on a Python lock
    rather than in SQLite's busy handler, which sleeps in steps of up to 100 ms and would let
    the lock stand idle while writers sleep. Other processes (the SMTP listener beside the ingest
    worker, `mailgate ingest` from an MTA beside the daemon) queue on an flock() of a lock file
    beside the database: the kernel wakes the next one the moment the lock is free.
    """

    def __init__(self, database: Path | None = None) -> None:
        self.lock = threading.Lock()
        self.lock_file = database.with_name(database.name + ".writer-lock") if database else None
        self._fd: int | None = None

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "begin", self.begin)
        event.listen(engine, "commit", self.commit)
        event.listen(engine, "rollback", self.rollback)
        event.listen(engine.pool, "reset", self.on_reset)

    def begin(self, connection: Connection) -> None:
        self._acquire()
        connection.info[_HOLDS_LOCK] = True
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self.end(connection)
            raise

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """This process's and this thread's turn to write, for a caller using the driver directly."""
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def _acquire(self) -> None:
        self.lock.acquire()
        try:
            self._lock_file(fcntl.LOCK_EX)
        except BaseException:
            self.lock.release()
            raise

    # SQLAlchemy calls these before the driver's commit or rollback: the lock is released only
    # after the transaction is over in SQLite, or the next writer would find SQLite's lock still
    # held and sleep in its busy handler. (The driver's own commit then finds nothing to do.)
    def commit(self, connection: Connection) -> None:
        try:
            if connection.info.get(_HOLDS_LOCK):
                connection.exec_driver_sql("COMMIT")
        finally:
            self.end(connection)

    def rollback(self, connection: Connection) -> None:
        try:
            if connection.info.get(_HOLDS_LOCK) and not connection.invalidated:
                with contextlib.suppress(Exception):  # the driver's own rollback follows anyway
                    connection.exec_driver_sql("ROLLBACK")
        finally:
            self.end(connection)

    def end(self, connection: Connection) -> None:
        if connection.info.pop(_HOLDS_LOCK, False):
            self._release()

    def on_reset(self, _dbapi_connection: object, record: object, _state: object = None) -> None:
        # A connection returned to the pool without commit or rollback events: never keep the lock.
        info = getattr(record, "info", {})
        if info.pop(_HOLDS_LOCK, False):
            self._release()

    def _lock_file(self, operation: int) -> None:
        if self.lock_file is None:
            return
        if self._fd is None:
            self._fd = os.open(self.lock_file, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, operation)  # waits with the GIL released

    def _release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self.lock.release()


_HOLDS_LOCK = "mailgate_holds_write_lock"


def sync_to_disk(engine: Engine) -> None:
    """Make every transaction committed so far durable, with one fsync (a no-op unless SQLite).

    In WAL mode a commit is appended to the -wal file; synchronous=NORMAL only skips its fsync.
    Syncing that file makes all commits in it durable; what a checkpoint moved out of it was
    synced into the database file by the checkpoint. No -wal file: nothing is pending."""
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        return
    try:
        fd = os.open(engine.url.database + "-wal", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_WRITERS: weakref.WeakKeyDictionary[Engine, _WriterQueue] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def sqlite_write(engine: Engine) -> Iterator[sqlite3.Connection]:
    """A pooled sqlite3 connection of `engine` in a BEGIN IMMEDIATE transaction, committed at
    the end, taken in turn with every other writer of the file: for a hot path where the cost
    of SQLAlchemy's statement handling would be most of the work."""
    writer = _WRITERS[engine]
    pooled = engine.raw_connection()
    try:
        driver = pooled.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        with writer.turn():
            driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
            except BaseException:
                driver.execute("ROLLBACK")
                raise
            driver.execute("COMMIT")
    finally:
        pooled.close()  # back to the pool


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(alembic_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` up to `revision` (the schema is created only this way)."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def describe(exc: BaseException) -> str:
    """One line about a failure, without the SQL statement and the mail's data it carries."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {str(exc.orig).splitlines()[0] if str(exc.orig) else ''}"
    return f"{type(exc).__name__}: {exc}"
