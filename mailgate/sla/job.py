"""The scheduler's job: every scan once, as of the injected clock."""

from __future__ import annotations

import logging
import threading

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


class Scanner:
    """The daemon's job: run_scans in a daemon thread of its own, one run at a time. Not in the
    scheduler's pool: a pool thread stuck on a database that never answers would keep the
    process from exiting at SIGTERM (the interpreter joins pool threads at exit)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._busy = threading.Lock()
        # stop() may come (from the daemon's shutdown) while the scheduler starts a run: under
        # this lock a run either starts and is seen by stop(), or sees the stop and never starts.
        self._starting = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def __call__(self) -> None:
        if not self._busy.acquire(blocking=False):
            log.info("sla scans: the last run is still going; skipping this one")
            return
        with self._starting:
            if self._stopped:
                self._busy.release()
                return
            thread = threading.Thread(target=self._run, name="sla-scans", daemon=True)
            try:
                thread.start()
            except BaseException:  # no thread to be had: the next run tries again
                self._busy.release()
                raise
            self._thread = thread

    def stop(self, timeout: float) -> None:
        """At shutdown: no run starts any more, and the one in progress may finish its
        transaction (and give its connection back) before the engine is disposed; one stuck on
        the database is left behind."""
        with self._starting:
            self._stopped = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        try:
            run_scans(self.app)
        except Exception:  # the next run tries again; a failure must not end the scheduling
            log.exception("sla scans failed")
        finally:
            self._busy.release()
