"""Each notification exactly once with two schedulers on one database (really concurrent: two
threads on PostgreSQL, two `mailgate sla scan` processes on SQLite), and a daemon that was
stopped over a weekend sends one escalation per ticket when it starts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC
from pathlib import Path

import pytest

from mailgate.app import App
from mailgate.sla import scans
from tests.sla_desk import at, desk, firings, mails, new_ticket, sent_at

TICKETS = 12


def _breached_desk(tmp_path: Path, db_url: str, **more: object) -> App:
    """Twelve tickets opened Friday noon: due 16:00, warned 15:00, level 2 Monday 12:00;
    unassigned ones go back to the dispatcher after two hours."""
    app = desk(tmp_path, db_url, when=at(4, 12), unassigned_after_hours=2, **more)
    for n in range(TICKETS):
        assignee = "alice@example.com" if n % 2 else None
        new_ticket(app, subject=f"ticket {n}", sender=f"user{n}@example.com", assignee=assignee)
    return app


def _once_each(app: App, kind: str) -> list[str]:
    rows = mails(app, kind)
    occasions = Counter(r.occasion for r in rows)
    assert all(n == 1 for n in occasions.values()), occasions
    return [r.recipients[0] for r in rows]


@pytest.mark.postgres
def test_two_schedulers_on_one_postgresql_database_notify_exactly_once(tmp_path, pg_migrated) -> None:
    from tests.conftest import _empty_pg

    _empty_pg(pg_migrated)
    app = _breached_desk(tmp_path, pg_migrated)
    other = App.build(app.settings, clock=app.clock)  # a second daemon: its own engine and connections
    failures: list[BaseException] = []
    for moment in (at(4, 15), at(4, 16, 30), at(7, 12)):  # warnings, then level 1, then level 2
        app.clock.set(moment.astimezone(UTC))
        start = threading.Barrier(2)

        def scheduler(daemon: App, start: threading.Barrier = start) -> None:
            try:
                with daemon.sessions() as session:
                    start.wait(timeout=30)
                    scans.run_all(session, daemon.settings, daemon.clock.now())
                    session.commit()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=scheduler, args=(d,)) for d in (app, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures, failures
    warned = _once_each(app, "sla_warning")
    assert sorted(warned) == sorted(["alice@example.com"] * 6 + ["dispatch@example.com"] * 6)
    escalated = _once_each(app, "sla_escalation")
    # Level 1: Alice's manager for hers, escalation_address for the unassigned; level 2: all of
    # them to escalation_address (Boss has no manager).
    assert Counter(escalated) == {"boss@example.com": 6, "it-lead@example.com": 6 + 12}
    assert len(_once_each(app, "sla_unassigned")) == 6
    other.close()
    app.close()


def _config(path: Path, app: App) -> Path:
    s = app.settings
    hours = ", ".join(f'{day} = "{span}"' for day, span in s.sla.business_hours.items())
    staff = "".join(
        f'[[staff]]\naddress = "{m.address}"\nname = "{m.name}"\nrole = "{m.role}"\nteam = "{m.team}"\n'
        f'manager = "{m.manager}"\nlanguage = "{m.language}"\n'
        for m in s.staff
    )
    path.write_text(
        f'data_dir = "{s.data_dir}"\ndatabase_url = "{s.database_url}"\nsecret = "{s.secret}"\n'
        f'[addresses]\nsupport = "{s.addresses.support}"\ndispatcher = "{s.addresses.dispatcher}"\n'
        f'[tickets]\ntimezone = "Europe/Berlin"\n'
        f'[sla]\nbusiness_hours = {{ {hours} }}\nescalation_address = "{s.sla.escalation_address}"\n'
        "unassigned_after_hours = 2\nidle_after_hours = 0\npending_reminder_days = 0\nclose_resolved_after_days = 0\n"
        '[sla.targets.normal]\nfirst_response = "4h"\nresolution = "3d"\n' + staff
    )
    return path


def test_two_sla_scan_commands_at_once_on_sqlite_notify_exactly_once(tmp_path, sqlite_template) -> None:
    db = tmp_path / "mailgate.db"
    shutil.copy(sqlite_template, db)
    app = _breached_desk(tmp_path, f"sqlite:///{db}")
    config = _config(tmp_path / "mailgate.toml", app)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    command = [sys.executable, "-m", "mailgate", "--config", str(config), "sla", "scan", "--at", "2026-12-04T16:30"]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in both]
    for process, (_, err) in zip(both, outputs, strict=True):
        assert process.returncode == 0, err.decode()
    # Between them they escalated each ticket once: one found them all, the other none left.
    escalated = [int(re.search(rb"escalate (\d+)", out).group(1)) for out, _ in outputs]
    assert sorted(escalated) == [0, TICKETS]
    assert len(_once_each(app, "sla_escalation")) == TICKETS
    assert len([f for f in firings(app) if f.kind.startswith("escalation")]) == TICKETS
    app.close()


def test_a_daemon_stopped_over_the_weekend_sends_one_escalation_per_ticket_on_start(tmp_path, db_url) -> None:
    from tests.daemon_harness import running_daemon, wait_for

    app = desk(tmp_path, db_url, when=at(4, 12), more={"smtp": {"enabled": False}})
    for n in range(3):
        new_ticket(app, subject=f"ticket {n}")  # due Friday 16:00; the daemon stopped at noon
    app.clock.set(at(7, 9, 5).astimezone(UTC))  # started again Monday morning
    with running_daemon(app):
        wait_for(lambda: len(mails(app, "sla_escalation")) == 3)
    # Stopped again; meanwhile a fourth ticket of Friday's turns up (say, from a restored spool).
    app.clock.set(at(4, 12).astimezone(UTC))
    new_ticket(app, subject="late", sender="erin@example.com")
    app.clock.set(at(7, 9, 10).astimezone(UTC))
    with running_daemon(app):  # the restart escalates the new one, and the three not again
        wait_for(lambda: len(mails(app, "sla_escalation")) >= 4)
    assert sent_at(mails(app, "sla_escalation")) == [("boss@example.com", at(7, 9, 5))] * 3 + [
        ("boss@example.com", at(7, 9, 10))
    ]
    app.close()


def test_a_stopping_daemon_lets_a_running_scan_finish_first(tmp_path, db_url, monkeypatch) -> None:
    """The scans run on a thread of their own: at shutdown the daemon waits (within its grace)
    for a run in progress to end its transaction before the engine goes, instead of leaving a
    connection behind in a thread that outlives it."""
    import threading

    from mailgate.sla import scans
    from tests.daemon_harness import running_daemon

    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_scan(session, settings, now) -> int:
        started.set()
        release.wait(5)
        finished.set()
        return 0

    monkeypatch.setattr(scans, "SCANS", (("slow", slow_scan),))
    app = desk(tmp_path, db_url)
    try:
        stopped = threading.Event()

        def stop_daemon() -> None:
            with running_daemon(app):
                assert started.wait(10), "the scans run at start"
            stopped.set()

        stopper = threading.Thread(target=stop_daemon)
        stopper.start()
        assert started.wait(10)
        assert not stopped.wait(0.5), "the daemon stopped while its scan was still running"
        release.set()
        stopper.join(15)
        assert finished.is_set() and stopped.is_set()
    finally:
        release.set()
        app.close()


def test_a_scan_the_scheduler_starts_after_the_stop_does_not_run(tmp_path, db_url, monkeypatch) -> None:
    """The scheduler may hand the scanner a run just as the daemon stops: that run must not start
    behind the shutdown's back, with the engine about to go (or gone)."""
    from mailgate.sla import scans
    from mailgate.sla.job import Scanner

    ran = threading.Event()
    monkeypatch.setattr(scans, "SCANS", (("probe", lambda session, settings, now: ran.set() or 0),))
    app = desk(tmp_path, db_url)
    try:
        scanner = Scanner(app)
        scanner()  # a run before the stop runs, and the stop waits for it
        scanner.stop(5)
        assert ran.is_set()
        ran.clear()
        scanner()
        scanner.stop(5)
        assert not ran.is_set()
    finally:
        app.close()
