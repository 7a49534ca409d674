"""A desk for the SLA tests: Berlin office hours (Mon-Fri 09:00-17:00), a 4-hour first answer and
a 3-day resolution for normal priority, Alice on the network team with Boss as her manager, and
helpers that move the clock and run the scans as the daemon would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from mailgate import people, tickets
from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.ingest.pipeline import ingest
from mailgate.models import Outbox, SlaFiring, Status, Ticket
from mailgate.sla import policy, scans
from tests.conftest import make_settings
from tests.mails import mail

BERLIN = ZoneInfo("Europe/Berlin")
OFFICE = {day: "09:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}
MX = "mx.example.com"  # the receiving MTA whose Authentication-Results the desk trusts
# What that MTA writes on mail from the company's own domain: a staff member's mail proven theirs.
PROVEN = {"Authentication-Results": f"{MX}; dmarc=pass header.from=example.com"}
MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=BERLIN)  # a working Monday


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """Berlin time on a day of the week of Monday 30 November 2026 (30, 1, 2, … 6 December)."""
    month = 11 if day >= 23 else 12
    return datetime(2026, month, day, hour, minute, tzinfo=BERLIN)


def desk(
    tmp_path: Path,
    db_url: str,
    when: datetime = MONDAY,
    more: dict[str, object] | None = None,
    language: str = "en",
    tickets: dict[str, object] | None = None,
    **sla: object,
) -> App:
    values: dict[str, object] = {
        "business_hours": OFFICE,
        "targets": {"normal": {"first_response": "4h", "resolution": "3d"}},
        "escalation_address": "it-lead@example.com",
        "unassigned_after_hours": 0,
        "idle_after_hours": 0,
        "pending_reminder_days": 0,
        "close_resolved_after_days": 0,
        **sla,
    }
    settings = make_settings(
        tmp_path,
        db_url,
        tickets={"timezone": "Europe/Berlin", "language": language, **(tickets or {})},
        sla=values,
        staff=[
            {"address": "alice@example.com", "name": "Alice Jones", "team": "network", "manager": "boss@example.com"},
            {"address": "bob@example.com", "name": "Bob Brown", "team": "network"},
            {"address": "dispatch@example.com", "name": "Dispatcher", "role": "dispatcher"},
            {"address": "boss@example.com", "name": "Bea Boss", "language": "de" if language == "en" else ""},
        ],
        **{"acknowledgements": {"trusted_authserv_ids": [MX]}, **(more or {})},
    )
    return App.build(settings, clock=FixedClock(when.astimezone(UTC)))


def new_ticket(app: App, *, assignee: str | None = "alice@example.com", **mail_args: object) -> int:
    number = ingest(app, mail(**mail_args), "smtp").ticket_number
    if assignee:
        change(app, number, lambda s, t, now: _assign(app, s, t, assignee, now))
    return number


def _assign(app: App, s, t: Ticket, address: str, now: datetime) -> None:
    tickets.assign(s, t, people.person_for(s, app.settings, address, "", now), actor="dispatch@example.com",
                   channel="test", now=now)  # fmt: skip
    tickets.set_status(s, t, Status.OPEN, actor="dispatch@example.com", channel="test", now=now)


def change(app: App, number: int, what) -> None:
    """What a desk command does: change the ticket and recompute, in one transaction."""
    now = app.clock.now()
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        what(s, t, now)
        policy.recompute(app.settings, t, now)
        s.commit()


def scan(app: App, at: datetime) -> dict[str, int]:
    app.clock.set(at.astimezone(UTC))
    with app.sessions() as s:
        counts = scans.run_all(s, app.settings, app.clock.now())
        s.commit()
    return counts


def run_daemon_clock(app: App, start: datetime, end: datetime, step: timedelta = timedelta(minutes=15)) -> None:
    """The scheduler's runs from `start` to `end`, every `step` of the moved clock."""
    at = start
    while at <= end:
        scan(app, at)
        at += step


def mails(app: App, kind: str) -> list[Outbox]:
    with app.sessions() as s:
        return list(s.scalars(select(Outbox).where(Outbox.kind == kind).order_by(Outbox.id)))


def sent_at(rows: list[Outbox]) -> list[tuple[str, datetime]]:
    return [(r.recipients[0], r.created_at.astimezone(BERLIN)) for r in rows]


def the_ticket(app: App, number: int) -> Ticket:
    with app.sessions() as s:
        return s.scalar(select(Ticket).where(Ticket.number == number))


def firings(app: App) -> list[SlaFiring]:
    with app.sessions() as s:
        return list(s.scalars(select(SlaFiring).order_by(SlaFiring.id)))
