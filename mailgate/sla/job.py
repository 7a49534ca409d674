"""The scheduler's job: every scan once, as of the injected clock, in one transaction."""

from __future__ import annotations

import logging

from mailgate.app import App
from mailgate.sla import scans

log = logging.getLogger("mailgate.sla")


def run_scans(app: App) -> dict[str, int]:
    now = app.clock.now()
    with app.sessions() as session:
        counts = scans.run_all(session, app.settings, now)
        session.commit()
    if any(counts.values()):
        log.info("sla scans at %s: %s", now.isoformat(), ", ".join(f"{k}={v}" for k, v in counts.items() if v))
        app.outbox_changed()
    return counts
