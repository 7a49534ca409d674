"""Which calendar and which targets apply to a ticket, and the deadlines they give.

The targets: a category's (for the ticket's priority) before its team's before the desk's
([sla.targets]); a priority the config gives no target has tickets.first_response_hours as its
first-response target. The calendar: the team's own, else the desk's. Deadlines count business
time from the ticket's creation, plus the business time it spent paused (pending).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from mailgate.config import Settings
from mailgate.models import SlaStage, Status, Ticket
from mailgate.sla.calendar import Calendar, holiday_set
from mailgate.sla.settings import Duration, Targets, TeamSla, _CalendarFields


@dataclass(frozen=True)
class Deadlines:
    first_response: datetime | None
    resolution: datetime | None


def timezone(settings: Settings) -> ZoneInfo:
    """The zone of every calendar (a team's own hours are in it too), and so the zone people
    read times in: the mails' promises, `tickets show`, `sla show`. [sla] timezone, else
    tickets.timezone."""
    return ZoneInfo(settings.sla.timezone or settings.tickets.timezone)


def calendar_for(settings: Settings, team: str | None) -> Calendar:
    sla = settings.sla
    own = sla.teams.get(team or "")
    fields: _CalendarFields = own if own is not None and own.business_hours is not None else sla
    return _build(fields, timezone(settings), team if fields is own else "")


def _build(fields: _CalendarFields, zone: ZoneInfo, name: str) -> Calendar:
    if fields.business_hours == "24x7" or fields.business_hours is None:
        return Calendar.always_open(zone, name or "24x7")
    days = holiday_set(fields.holidays, fields.holiday_country, fields.holiday_subdivision)
    return Calendar.from_hours(zone, fields.business_hours, days, name or "business hours")


def day_length(calendar: Calendar) -> timedelta:
    """What "1d" of a target means in `calendar`: its most common working day (8 hours for
    09:00-17:00; 24 hours in 24x7)."""
    lengths = Counter(sum(end - start for start, end in spans) for spans in calendar.week if spans)
    return timedelta(minutes=lengths.most_common(1)[0][0])


def targets_for(settings: Settings, priority: str, category: str | None, team: str | None) -> Targets:
    sla = settings.sla
    chosen: dict[str, Duration | None] = {"first_response": None, "resolution": None}
    team_sla: TeamSla | None = sla.teams.get(team or "")
    category_sla = sla.categories.get(category or "")
    layers = [
        category_sla.targets.get(priority) if category_sla is not None else None,
        team_sla.targets.get(priority) if team_sla is not None else None,
        sla.targets.get(priority),
    ]
    for layer in layers:
        if layer is None:
            continue
        for key in chosen:
            if chosen[key] is None:
                chosen[key] = getattr(layer, key)
    hours = dict(settings.tickets.first_response_hours).get(priority)
    if chosen["first_response"] is None and hours is not None:
        chosen["first_response"] = Duration(minutes=hours * 60)
    return Targets(**chosen)


def deadlines(
    settings: Settings,
    *,
    priority: str,
    category: str | None,
    team: str | None,
    start: datetime,
    paused: timedelta = timedelta(0),
    share: float = 1.0,
) -> Deadlines:
    """The deadlines of a ticket opened at `start` that spent `paused` business time pending;
    with `share`, when that share of each target has passed (the warning)."""
    calendar = calendar_for(settings, team)
    targets = targets_for(settings, priority, category, team)
    length = day_length(calendar)

    def due(target: Duration | None) -> datetime | None:
        return None if target is None else calendar.add(start, target.resolve(length) * share + paused)

    return Deadlines(due(targets.first_response), due(targets.resolution))


def set_deadlines(settings: Settings, ticket: Ticket, paused: timedelta = timedelta(0)) -> None:
    """Compute and store `ticket`'s deadlines from its priority, category and team: when it is
    created, and again when one of them changes. The warning instants too (sla.warn_at of each
    target), so that the scans find what is due with a query."""
    start, share = ticket.created_at, settings.sla.warn_at
    found = deadlines(
        settings, priority=ticket.priority, category=ticket.category, team=ticket.team, start=start, paused=paused
    )
    # A deadline that moved is a new promise: its warning and escalations may fire again.
    if found.first_response != ticket.first_response_due:
        ticket.first_response_stage = SlaStage.MET if ticket.first_response_at else SlaStage.NONE
    if found.resolution != ticket.resolution_due:
        ticket.resolution_stage = SlaStage.NONE
    ticket.first_response_due, ticket.resolution_due = found.first_response, found.resolution
    warned = deadlines(
        settings,
        priority=ticket.priority,
        category=ticket.category,
        team=ticket.team,
        start=start,
        paused=paused,
        share=share,
    )
    ticket.first_response_warn_at, ticket.resolution_warn_at = warned.first_response, warned.resolution


def pauses(ticket: Ticket, now: datetime) -> list[tuple[datetime, datetime]]:
    """The ticket's pauses as instants, the one under way (pending now) ending `now`."""
    found = [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in ticket.pauses or []]
    if ticket.status == Status.PENDING and ticket.pending_since is not None:
        found.append((ticket.pending_since, max(now, ticket.pending_since)))
    return found


def paused_time(settings: Settings, ticket: Ticket, now: datetime) -> timedelta:
    """The business time `ticket` spent pending, in its calendar: a weekend pending counts zero."""
    calendar = calendar_for(settings, ticket.team)
    return sum((calendar.between(a, b) for a, b in pauses(ticket, now)), timedelta(0))


def recompute(settings: Settings, ticket: Ticket, now: datetime) -> None:
    """Deadlines again, after a change of priority, category, team or status (the commands call
    this; tickets.set_status keeps the pauses). Counted from creation, plus the business time
    the ticket was pending; while it is pending, up to `now`."""
    set_deadlines(settings, ticket, paused_time(settings, ticket, now))
