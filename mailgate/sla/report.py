"""What `mailgate sla show|check` print: a ticket's deadlines, pauses and firings; the tickets
at risk and in breach. Read-only."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailgate.config import Settings
from mailgate.models import SlaFiring, Status, Ticket
from mailgate.sla import policy

OPEN = (Status.NEW, Status.OPEN)


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%a %Y-%m-%d %H:%M") if moment else "-"


def show(session: Session, settings: Settings, number: int, now: datetime) -> list[str] | None:
    ticket = session.scalar(select(Ticket).where(Ticket.number == number))
    if ticket is None:
        return None
    zone = policy.timezone(settings)
    calendar = policy.calendar_for(settings, ticket.team)
    targets = policy.targets_for(settings, ticket.priority, ticket.category, ticket.team)
    tag = f"{settings.tickets.tag_prefix} #{ticket.number}"
    lines = [
        f"{tag}  {ticket.status}  priority {ticket.priority}  team {ticket.team or '-'}  "
        f"category {ticket.category or '-'}{'  (imported: never escalates)' if ticket.imported else ''}",
        f"calendar: {calendar.name or 'business hours'} ({zone.key}); times below in {zone.key}",
        f"opened:          {_when(ticket.created_at, zone)}",
    ]
    for name, target, due, warn, met in (
        ("first response", targets.first_response, ticket.first_response_due, ticket.first_response_warn_at,
         ticket.first_response_at),
        ("resolution", targets.resolution, ticket.resolution_due, ticket.resolution_warn_at, ticket.resolved_at),
    ):  # fmt: skip
        if target is None:
            lines.append(f"{name + ':':<16} no target")
            continue
        state = f"met {_when(met, zone)}" if met else "in breach" if due and due <= now else "running"
        lines.append(f"{name + ':':<16} {target} -> due {_when(due, zone)}, warning {_when(warn, zone)}; {state}")
    pauses = policy.pauses(ticket, now)
    paused = policy.paused_time(settings, ticket, now)
    lines.append(f"paused:          {len(pauses)} time(s), {paused} of business time")
    for start, end in pauses:
        lines.append(f"  {_when(start, zone)} - {_when(end, zone)}{' (under way)' if end == now else ''}")
    if ticket.pending_until is not None:
        lines.append(f"pending until:   {_when(ticket.pending_until, zone)}")
    if ticket.rating is not None:
        lines.append(f"rating:          {ticket.rating}/5 by the requester, {_when(ticket.rated_at, zone)}")
    firings = list(session.scalars(select(SlaFiring).where(SlaFiring.ticket_id == ticket.id).order_by(SlaFiring.id)))
    lines.append(f"fired:           {len(firings) or 'nothing yet'}")
    for f in firings:
        lines.append(
            f"  {_when(f.fired_at, zone)}  {f.kind} level {f.level} (for {_when(f.deadline, zone)})"
            f"{' to ' + f.recipient if f.recipient else ''}"
        )
    return lines


def check(session: Session, settings: Settings, now: datetime, limit: int) -> list[str]:
    """Open tickets in breach, then at risk (past the warning), soonest deadline first."""
    zone = policy.timezone(settings)
    prefix = settings.tickets.tag_prefix
    base = select(Ticket).where(Ticket.status.in_(OPEN), Ticket.imported.is_(False))
    first_unmet = Ticket.first_response_at.is_(None)
    breach = base.where(or_(first_unmet & (Ticket.first_response_due <= now), Ticket.resolution_due <= now)).order_by(
        Ticket.resolution_due, Ticket.id
    )
    risk = base.where(
        or_(
            first_unmet & (Ticket.first_response_warn_at <= now) & (Ticket.first_response_due > now),
            (Ticket.resolution_warn_at <= now) & (Ticket.resolution_due > now),
        ),
        ~(first_unmet & (Ticket.first_response_due <= now)),
        or_(Ticket.resolution_due.is_(None), Ticket.resolution_due > now),
    ).order_by(Ticket.first_response_due, Ticket.id)
    lines: list[str] = []
    for label, query in (("in breach", breach), ("at risk", risk)):
        rows = list(session.scalars(query.limit(limit)))
        lines.append(f"{label}: {len(rows)}{'+' if len(rows) == limit else ''}")
        for t in rows:
            unmet = t.first_response_at is None
            due = t.first_response_due if unmet and t.first_response_due else t.resolution_due
            what = "first response" if unmet and t.first_response_due else "resolution"
            lines.append(
                f"  {prefix} #{t.number}  {t.priority:<6} {what} due {_when(due, zone)}  "
                f"{t.assignee.address if t.assignee else 'unassigned'}  {t.subject[:60]}"
            )
    return lines
