"""The scheduler's job: every scan once, as of the injected clock."""

from __future__ import annotations

import logging

from mailgate.app import App
from mailgate.sla import scans

log = logging.getLogger("mailgate.sla")


def run_scans(app: App) -> dict[str, int]:
    """A transaction per scan: on SQLite each holds the write lock, and ingest() waits for it,
    only as long as one scan takes."""
    now = app.clock.now()
    counts: dict[str, int] = {}
    for name, scan in scans.SCANS:
        with app.sessions() as session:
            counts[name] = scan(session, app.settings, now)
            session.commit()
    if any(counts.values()):
        log.info("sla scans at %s: %s", now.isoformat(), ", ".join(f"{k}={v}" for k, v in counts.items() if v))
        app.outbox_changed()
    return counts
