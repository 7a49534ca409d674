"""One full SLA scan (every scan of mailgate/sla/scans.py, as the daemon runs them) over 100,000
open tickets, on SQLite and on PostgreSQL.

    python bench/sla.py [--tickets 100000] [--postgres postgresql+psycopg:///mailgate_bench_sla]

The tickets are a desk's last 60 days: most answered, a part unassigned, pending or resolved;
the earlier runs' firings are in sla_firings, so the scans have to look past what fired before.
Prints, per backend, the first run (fires what came due in the five minutes since the last run)
and a steady run (nothing new is due): the goal is under 1 s for each.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.config import Settings
from mailgate.db import upgrade
from mailgate.models import Person, SlaFiring, SlaStage, Ticket
from mailgate.sla import scans

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # a Monday morning: the desk is open
STAFF = 20


def settings(url: str, data: Path) -> Settings:
    return Settings(
        data_dir=data,
        database_url=url,
        secret="bench-secret-0123456789",
        addresses={"support": "support@example.com", "dispatcher": "dispatch@example.com"},
        staff=[{"address": f"agent{n}@example.com", "manager": "boss@example.com"} for n in range(STAFF)],
        sla={"targets": {"normal": {"first_response": "4h", "resolution": "3d"}}, "escalation_address": "lead@x.org"},
    )


def _row(rng: random.Random, n: int) -> dict[str, object]:
    created = NOW - timedelta(minutes=rng.randrange(60 * 24 * 60))
    kind = rng.random()
    status = "open" if kind < 0.75 else "new" if kind < 0.85 else "pending" if kind < 0.93 else "resolved"
    answered = status != "new" and rng.random() < 0.9
    # Pending and resolved tickets as the scans leave them: none pending past its resolution
    # (3 reminders of 3 days), none resolved longer than the 7 days that close it.
    since = NOW - timedelta(minutes=rng.randrange(60 * 24 * 9)) if status == "pending" else None
    resolved = NOW - timedelta(minutes=rng.randrange(60 * 24 * 7)) if status == "resolved" else None
    return {
        "id": n,
        "number": n,
        "subject": f"ticket {n}",
        "requester_id": rng.randrange(1, 2001),
        "status": status,
        "priority": "normal",
        "assignee_id": None if status == "new" and rng.random() < 0.7 else 2001 + rng.randrange(STAFF),
        "created_at": created,
        "last_activity_at": min(created + timedelta(hours=rng.randrange(72)), NOW),
        "first_response_due": created + timedelta(hours=4),
        "first_response_warn_at": created + timedelta(hours=3),
        "first_response_at": created + timedelta(hours=2) if answered else None,
        "resolution_due": created + timedelta(days=3),
        "resolution_warn_at": created + timedelta(days=2, hours=6),
        "pending_since": since,
        "resolved_at": resolved,
        "pauses": [],
    }


def _fired_before(row: dict[str, object], before: datetime) -> list[tuple[str, int, object]]:
    """What the scans fired for `row` up to `before`: the daemon ran until five minutes ago."""
    out: list[tuple[str, int, object]] = []
    status, live = row["status"], row["status"] in ("new", "open")
    for target in ("first_response", "resolution"):
        due, warn = row[f"{target}_due"], row[f"{target}_warn_at"]
        if not live or (target == "first_response" and row["first_response_at"] is not None):
            continue
        if warn <= before < due:
            out.append((f"warning:{target}", 1, due))
        if due <= before:
            out.append((f"escalation:{target}", 1, due))
        if due <= before - timedelta(days=1):
            out.append((f"escalation:{target}", 2, due))
    if live and row["assignee_id"] is None and row["created_at"] <= before - timedelta(hours=2):
        out.append(("unassigned", 1, row["created_at"]))
    if status == "open" and row["assignee_id"] and row["last_activity_at"] <= before - timedelta(hours=48):
        out.append(("idle", 1, row["last_activity_at"]))
    if status == "pending":
        reminders = int((before - row["pending_since"]) / timedelta(days=3))
        if reminders:
            out.append(("pending_reminder", min(reminders, 2), row["pending_since"]))
    return out


def populate(url: str, count: int, seed: int = 13) -> None:
    rng = random.Random(seed)
    engine = create_engine(url)
    people = [{"id": n + 1, "address": f"user{n}@example.com", "created_at": NOW} for n in range(2000)]
    people += [
        {"id": 2001 + n, "address": f"agent{n}@example.com", "role": "agent", "created_at": NOW} for n in range(STAFF)
    ]
    rows = [_row(rng, n) for n in range(1, count + 1)]
    firings = []
    for row in rows:
        fired = _fired_before(row, NOW - timedelta(minutes=5))
        firings += [
            {"ticket_id": row["id"], "kind": kind, "level": level, "deadline": deadline, "fired_at": NOW,
             "recipient": "", "note": ""}
            for kind, level, deadline in fired
        ]  # fmt: skip
        # The stages those firings left on the ticket (see scans.TARGETS).
        for target in ("first_response", "resolution"):
            stage = SlaStage.MET if target == "first_response" and row["first_response_at"] else SlaStage.NONE
            for kind, level, _ in fired:
                if kind == f"warning:{target}":
                    stage = max(stage, SlaStage.WARNED)
                elif kind == f"escalation:{target}":
                    stage = max(stage, SlaStage.ESCALATED if level == 1 else SlaStage.ESCALATED_AGAIN)
            row[f"{target}_stage"] = int(stage)
        row["idle_reminded"] = any(kind == "idle" for kind, _, _ in fired)
    with engine.begin() as conn:
        conn.execute(insert(Person), people)
        for start in range(0, len(rows), 5000):
            conn.execute(insert(Ticket), rows[start : start + 5000])
        for start in range(0, len(firings), 5000):
            conn.execute(insert(SlaFiring), firings[start : start + 5000])
        if engine.dialect.name == "postgresql":  # the ids were given: move the sequences past them
            for table in ("people", "tickets"):
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                )
        conn.execute(text("ANALYZE"))  # as autovacuum (PostgreSQL) or `PRAGMA optimize` would have
    engine.dispose()
    print(f"{count} tickets, {len(firings)} earlier firings")


def measure(name: str, url: str, count: int, data: Path) -> None:
    populate(url, count)
    app = App.build(settings(url, data), clock=FixedClock(NOW))
    for label in ("first run", "steady run"):
        started = time.perf_counter()
        with app.sessions() as session:
            counts = scans.run_all(session, app.settings, NOW)
            session.commit()
        took = time.perf_counter() - started
        fired = ", ".join(f"{k} {v}" for k, v in counts.items())
        print(f"{name:<10} {count:>7} tickets  {label:<10} {took:6.3f} s   ({fired})")
    app.close()


def fresh_postgres(url: str) -> str:
    base = make_url(url)
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{base.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{base.database}"'))
    admin.dispose()
    upgrade(url)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000, help="Open tickets to scan.")
    parser.add_argument("--postgres", default="postgresql+psycopg:///mailgate_bench_sla", help="A database to replace.")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        upgrade(f"sqlite:///{path}")
        measure("sqlite", f"sqlite:///{path}", args.tickets, Path(tmp))
        if not args.no_postgres:
            measure("postgresql", fresh_postgres(args.postgres), args.tickets, Path(tmp))


if __name__ == "__main__":
    main()
