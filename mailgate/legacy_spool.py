"""Upgrading from a release that spooled mail in the database: what still waits there moves into
the spool directory when the daemon starts, so nothing accepted before the upgrade is lost.

Those releases kept the spool as the table `spool`: in the database itself on PostgreSQL, in a
file of its own (`mailgate-spool.db` beside the database) on SQLite. Each row is written to the
spool directory (durably) before it is deleted; a crash in between leaves both copies, and the
second ingest of the same mail is a duplicate, a no-op. The emptied SQLite file is removed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import delete, inspect, select
from sqlalchemy.engine import make_url

from mailgate.config import Settings
from mailgate.db import make_engine
from mailgate.models import SpoolEntry
from mailgate.spool import Envelope, Spool

log = logging.getLogger("mailgate.spool")

TABLE = SpoolEntry.__table__
BATCH = 100  # rows in memory at once: a spooled mail may be tens of megabytes


def drain_legacy_spool(settings: Settings, spool: Spool) -> int:
    """Move every row of the old database spool into `spool`; returns how many moved."""
    url = settings.legacy_spool_url
    parsed = make_url(url)
    sqlite_file = Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None
    if sqlite_file is not None and not sqlite_file.exists():
        return 0
    engine = make_engine(url)
    moved = 0
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(TABLE.name):
                return 0
        while True:
            with engine.begin() as conn:
                # SKIP LOCKED: daemons on one PostgreSQL database may all start at once.
                query = select(TABLE).order_by(TABLE.c.id).limit(BATCH).with_for_update(skip_locked=True)
                rows = conn.execute(query).all()
                for row in rows:
                    envelope = Envelope(
                        source=row.source,
                        sender=row.envelope_sender,
                        recipients=tuple(row.envelope_recipients),
                        received_at=row.received_at,
                    )
                    spool.put(row.raw, envelope)
                if rows:
                    conn.execute(delete(TABLE).where(TABLE.c.id.in_([row.id for row in rows])))
            moved += len(rows)
            if len(rows) < BATCH:
                break
    finally:
        engine.dispose()
    if sqlite_file is not None:
        for leftover in (sqlite_file, Path(f"{sqlite_file}-wal"), Path(f"{sqlite_file}-shm")):
            leftover.unlink(missing_ok=True)
    if moved:
        log.warning("moved %d mails from the database spool of an earlier release into %s", moved, spool.root)
    return moved
