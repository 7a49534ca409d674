"""The SMTP listener's spool: accepted mail waits here, durable, until ingest() has taken it.

The listener answers 250 as soon as the row is committed, the way an MTA answers once the mail
is in its queue; a worker then runs ingest() on each row and deletes it after ingest() committed.
A crash between the two offers the mail again, and dedupe makes that a no-op: never lost, never
twice. A row whose ingest fails temporarily (the database is down) is retried with back-off; one
that keeps failing goes to quarantine with its raw bytes and the last error.

On PostgreSQL the spool is a table of the database (any daemon may take the rows); on SQLite it
is a file of its own beside the database (see Settings.spool_database_url). The spool keeps its
own wall-clock time: the listener and the worker run in different processes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, DisconnectionError, IntegrityError

from mailgate.clock import Clock, SystemClock
from mailgate.db import make_engine, sqlite_write
from mailgate.models import SpoolEntry

# A worker that took a row and died gives it back after this long.
CLAIM_SECONDS = 600
TABLE = SpoolEntry.__table__


def retry_delay(attempts: int) -> timedelta:
    """1, 2, 4 … seconds, at most an hour: a database outage of minutes costs minutes, not hours."""
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), 3600))


@dataclass
class Taken:
    id: int
    raw: bytes
    source: str
    envelope_sender: str
    envelope_recipients: list[str]
    attempts: int
    received_at: datetime


class Spool:
    def __init__(self, engine: Engine, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()

    @classmethod
    def open(cls, url: str, clock: Clock | None = None, *, pre_ping: bool = True) -> Spool:
        """pre_ping=False (the listener): no round trip to test a pooled PostgreSQL connection
        before each mail; put() replaces a connection PostgreSQL dropped and tries again."""
        engine = make_engine(url, pre_ping=pre_ping)
        if make_url(url).get_backend_name() == "sqlite":
            # The separate SQLite spool file is not a migrated database: it holds this one table,
            # made here. (On PostgreSQL the table comes with the migrations.)
            TABLE.create(engine, checkfirst=True)
        return cls(engine, clock)

    def close(self) -> None:
        self.engine.dispose()

    def put(self, raw: bytes, source: str, envelope_sender: str, envelope_recipients: Sequence[str]) -> int:
        """Keep the mail; once this returns, it is safe to answer 250."""
        row = {"raw": raw, "source": source, "sender": envelope_sender, "recipients": list(envelope_recipients)}
        return self.put_many([row])[0]

    def put_many(self, mails: Sequence[dict[str, Any]]) -> list[int]:
        """Keep several mails in one transaction (keys raw, source, sender, recipients); their ids
        in the same order."""
        now = self.clock.now()
        rows = [
            {
                "raw": mail["raw"],
                "source": mail["source"][:100],
                "envelope_sender": mail["sender"],
                "envelope_recipients": mail["recipients"],
                "received_at": now,
                "attempts": 0,
                "next_attempt_at": now,
                "last_error": "",
            }
            for mail in mails
        ]
        # Every mail the listener accepts comes through here: straight to the driver, with the
        # columns' own bind processors, costs a fraction of a Core insert (bench/smtp.py).
        values = [tuple(process(row[name]) if process else row[name] for name, process in self._binds) for row in rows]
        if self.engine.dialect.name == "sqlite":
            with sqlite_write(self.engine) as conn:
                return [int(conn.execute(self._insert_sql, params).lastrowid or 0) for params in values]
        if self.engine.dialect.driver == "psycopg":
            try:
                return self._put_psycopg(values)
            except DisconnectionError:  # PostgreSQL restarted since: once more on a new connection
                return self._put_psycopg(values)
        with self.engine.begin() as conn:
            result = conn.execute(insert(TABLE).returning(TABLE.c.id, sort_by_parameter_order=True), rows)
            return [int(i) for i in result.scalars()]

    def refused_a_value(self, exc: BaseException) -> bool:
        """Whether `exc` from put_many() is the database refusing a value of the mails (one mail's
        problem), not the database being unavailable (everyone's)."""
        dbapi = self.engine.dialect.loaded_dbapi
        if isinstance(exc, DBAPIError):
            exc = exc.orig or exc
        return isinstance(exc, (UnicodeError, dbapi.DataError, dbapi.IntegrityError, DataError, IntegrityError))

    def _put_psycopg(self, values: list[tuple[Any, ...]]) -> list[int]:
        # One mail: a lone INSERT in autocommit is a transaction of its own, one round trip
        # instead of BEGIN, INSERT, COMMIT. Several (group commit): one transaction, the INSERTs
        # pipelined by executemany. A connection PostgreSQL dropped is replaced (see open()).
        pooled = self.engine.raw_connection()
        try:
            driver = pooled.driver_connection
            sql = self._insert_sql + " RETURNING id"
            try:
                if len(values) == 1:
                    driver.autocommit = True
                    try:
                        return [int(driver.execute(sql, values[0]).fetchone()[0])]
                    finally:
                        if not driver.closed:  # (a broken connection refuses it, hiding the real error)
                            driver.autocommit = False
                ids = []
                with driver.transaction(), driver.cursor() as cursor:
                    cursor.executemany(sql, values, returning=True)
                    while True:
                        ids.append(int(cursor.fetchone()[0]))
                        if not cursor.nextset():
                            break
                return ids
            except self.engine.dialect.loaded_dbapi.Error as exc:
                if self.engine.dialect.is_disconnect(exc, driver, None) or driver.closed:
                    pooled.invalidate()
                    raise DisconnectionError(str(exc)) from exc
                raise
        finally:
            pooled.close()  # back to the pool

    @functools.cached_property
    def _binds(self) -> list[tuple[str, Callable[[Any], Any] | None]]:
        names = [c.name for c in TABLE.columns if c.name != "id"]
        dialect = self.engine.dialect
        # dialect_impl: SQLite's own DATETIME formatting, exactly what a Core insert would store.
        return [(name, TABLE.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names]

    @functools.cached_property
    def _insert_sql(self) -> str:
        names = [name for name, _ in self._binds]
        marker = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        return f"INSERT INTO {TABLE.name} ({', '.join(names)}) VALUES ({', '.join([marker] * len(names))})"

    def take(self, limit: int) -> list[Taken]:
        """Claim up to `limit` due rows, oldest first, and commit the claim at once (no lock stays
        held while they are ingested). SKIP LOCKED: two daemons never take the same row."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(TABLE)
                .where(TABLE.c.next_attempt_at <= now)
                .order_by(TABLE.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                conn.execute(
                    update(TABLE)
                    .where(TABLE.c.id.in_([r.id for r in rows]))
                    .values(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
                )
        return [
            Taken(r.id, r.raw, r.source, r.envelope_sender, list(r.envelope_recipients), r.attempts, r.received_at)
            for r in rows
        ]

    def done(self, *entry_ids: int) -> None:
        if not entry_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(delete(TABLE).where(TABLE.c.id.in_(entry_ids)))

    def release(self, *entry_ids: int) -> None:
        """Give back claimed rows that were not tried: due again now."""
        with self.engine.begin() as conn:
            conn.execute(update(TABLE).where(TABLE.c.id.in_(entry_ids)).values(next_attempt_at=self.clock.now()))

    def failed(self, entry: Taken, error: str) -> datetime:
        """Offer the row again later; returns when."""
        attempts = entry.attempts + 1
        due = self.clock.now() + retry_delay(attempts)
        with self.engine.begin() as conn:
            conn.execute(
                update(TABLE)
                .where(TABLE.c.id == entry.id)
                .values(attempts=attempts, next_attempt_at=due, last_error=error[:2000])
            )
        return due

    def next_due(self) -> datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(select(TABLE.c.next_attempt_at).order_by(TABLE.c.next_attempt_at).limit(1)).scalar()

    def lines(self, limit: int = 200) -> list[str]:
        """What waits, oldest first, one line each (for `mailgate spool list`)."""
        columns = [TABLE.c[name] for name in ("id", "received_at", "attempts", "next_attempt_at", "last_error")]
        columns += [TABLE.c.envelope_sender, TABLE.c.envelope_recipients]
        with self.engine.connect() as conn:
            rows = conn.execute(select(*columns).order_by(TABLE.c.id).limit(limit)).all()
        return [
            f"{r.id:>6}  received {r.received_at:%Y-%m-%d %H:%M:%S}  <{r.envelope_sender}> -> "
            f"{', '.join(r.envelope_recipients)}"
            + (f"  attempts {r.attempts}, next {r.next_attempt_at:%H:%M:%S}: {r.last_error}" if r.attempts else "")
            for r in rows
        ]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(TABLE)).scalar_one())
