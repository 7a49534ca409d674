"""Engine and sessions: SQLite in WAL mode by default, PostgreSQL by URL; migrations by alembic."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mailgate.storable import scrub_before_flush

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# A writer waits this long for SQLite's write lock before it gives up; the transport then
# answers "try again later" (SMTP 451, exit 75), never waits forever.
SQLITE_BUSY_SECONDS = 5.0
PG_CONNECT_SECONDS = 10


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and foreign keys, and their
    transactions begin the way SQLAlchemy's documentation recommends for pysqlite (see _begin)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin)
        return engine
    # A server that accepts and never answers (a frozen host, a dead network path) must fail
    # a connection in seconds, like one that refuses: the caller retries later.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_SECONDS})


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # The sqlite3 module would begin transactions itself, late and deferred: SQLAlchemy does it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer, nor the writer them. FULL syncs the WAL at every
    # commit: a commit is what lets a spooled mail go and the IMAP poller move a mail away, so it
    # must survive a power cut, not only a crash of the process (which NORMAL survives).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin(connection: Connection) -> None:
    """BEGIN IMMEDIATE unless the connection was opened for reading (see reader()).

    A transaction that reads and then writes must hold the write lock from its start: one that
    began deferred and wants to write after another writer committed fails at once with
    SQLITE_BUSY, whatever the busy timeout. Readers begin deferred and never take the lock."""
    mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
    connection.exec_driver_sql(f"BEGIN {mode}")


def reader(engine: Engine) -> Engine:
    """The same engine and pool for transactions that only read: on SQLite they begin deferred,
    so a slow reader (`mailgate tickets list | less`) never holds up a writer."""
    return engine.execution_options(sqlite_begin="DEFERRED")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)
    event.listen(factory, "before_flush", scrub_before_flush)  # the same rows on every backend
    return factory


def alembic_config(url: str) -> AlembicConfig:
    # Imported here: alembic costs most of a second, and only `db upgrade` and the tests need it.
    from alembic.config import Config as AlembicConfig

    from mailgate.resources import alembic_dir

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(alembic_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema at `url` up to `revision` (the schema is created only this way).
    Returns the revision before and after: (None, …) when there was no schema."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
            cfg = alembic_config(url)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
            after = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return before, after


# The newest migration in alembic/versions (tests/test_migrations.py checks it against alembic's
# head, so a migration cannot land without it): the daemon compares the database with it at start
# without importing alembic, which costs most of a second.
SCHEMA_REVISION = "0017"


def schema_problem(connection: Connection) -> str | None:
    """Why this release cannot work on the database's schema (none yet, another revision), or
    None. Read from alembic's own table."""
    found: list[str | None] = []
    if inspect(connection).has_table("alembic_version"):
        found = list(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
    if found == [SCHEMA_REVISION]:
        return None
    if not found:
        return "the database has no mailgate schema yet: run `mailgate db upgrade`"
    return (
        f"the database's schema is at revision {', '.join(map(str, found))}, this release needs {SCHEMA_REVISION}:"
        " run `mailgate db upgrade` (if this release does not know that revision, a newer mailgate"
        " migrated the database: upgrade this one)"
    )


def describe(exc: BaseException) -> str:
    """One line about a failure, without the SQL statement and the mail's data it carries."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {str(exc.orig).splitlines()[0] if str(exc.orig) else ''}"
    return f"{type(exc).__name__}: {exc}"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit PostgreSQL advisory-lock key for `name`."""
    digest = hashlib.sha256(f"mailgate:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
