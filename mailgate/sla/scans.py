"""The SLA scans: each a plain function (session, settings, now) -> how many things it did, run
by the daemon's scheduler and by `mailgate sla scan`. The caller commits.

Each scan is one query for the tickets whose moment has passed and that have no firing for it
yet (sla_firings, see firing.py), at most sla.scan_batch of them, oldest first; so a daemon
that was down over a weekend finds each overdue ticket once, not once per missed run, and a
backlog is worked off run by run. Mail to people waits for the opening hours of the ticket's
calendar (sla.at_any_hour lists kinds that do not wait; an urgent ticket's escalation goes at
once): the query leaves out the tickets whose calendar is closed now, and the next run in
opening hours finds them. Imported (history) and closed tickets never escalate.

    deadlines        a ticket opened before the desk had SLA targets (an upgrade) gets its
                     deadlines, counted from its creation, once
    resume_pending   a ticket pending until a date (#pending until) is open again at that date
    warn             the assignee (else the dispatcher), at sla.warn_at of a target
    escalate         a breach: level 1 to the team lead / the assignee's manager, level 2 later
    unassigned       an unassigned ticket older than sla.unassigned_after_hours: the dispatcher
    idle             the assignee of an open ticket nothing happened on for sla.idle_after_hours
    remind_pending   the requester of a pending ticket, every sla.pending_reminder_days, then
                     resolved after sla.pending_reminders of them
    close_resolved   a resolved ticket closes after sla.close_resolved_after_days, asking a rating
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, ColumnElement, Integer, Select, and_, bindparam, exists, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from mailgate import tickets
from mailgate.config import Settings
from mailgate.models import SlaFiring, SlaStage, Status, Ticket
from mailgate.sla import policy, routing
from mailgate.sla.calendar import Calendar
from mailgate.sla.firing import Mailer, fire

OPEN = (Status.NEW, Status.OPEN)
ACTOR, CHANNEL = "mailgate", "sla"
Scan = Callable[[Session, Settings, datetime], int]


class _Run:
    """What one scan needs more than once: the calendars by team, the mailer (built at the first
    mail: a run that finds nothing reads no templates and no key)."""

    def __init__(self, session: Session, settings: Settings, now: datetime) -> None:
        self.session, self.settings, self.now = session, settings, now
        self.batch = settings.sla.scan_batch
        self._calendars: dict[str, Calendar] = {}
        self._mailer: Mailer | None = None

    def calendar(self, team: str | None) -> Calendar:
        key = team if team in self.settings.sla.teams else ""
        if key not in self._calendars:
            self._calendars[key] = policy.calendar_for(self.settings, key or None)
        return self._calendars[key]

    @property
    def mail(self) -> Mailer:
        if self._mailer is None:
            self._mailer = Mailer.for_run(self.session, self.settings, self.now)
        return self._mailer

    def tickets(self, query: Select[tuple[Ticket]], **params: Any) -> Iterator[Ticket]:
        yield from self.session.scalars(query, {"now": self.now, "batch": self.batch, **params}).all()

    def hours(self, kind: str) -> dict[str, Any]:
        """The parameters of _IN_HOURS for `kind` now: which calendars are open (all of them, for
        a kind that goes at any hour)."""
        sla = self.settings.sla
        urgent = sla.urgent_escalations_at_once
        if kind in sla.at_any_hour:
            return {"open_teams": [], "default_open": True, "own_teams": [], "urgent_now": urgent}
        own = [name for name, team in sla.teams.items() if team.business_hours is not None]
        return {
            "open_teams": [name for name in own if self.calendar(name).is_open(self.now)],
            "default_open": self.calendar(None).is_open(self.now),
            "own_teams": own,
            "urgent_now": urgent,
        }


# Each scan's query is built once, here: what changes from run to run (now, the open calendars,
# the thresholds of the settings) comes in as parameters, so a run spends its time on the
# database, not on building statements (most runs find nothing).
#
# Tickets whose calendar is open now: a team with business hours of its own when that calendar
# is open (open_teams), the others (no team, or a team on the default hours) when the default
# calendar is (default_open).
_IN_HOURS = or_(
    Ticket.team.in_(bindparam("open_teams", expanding=True)),
    and_(
        bindparam("default_open", type_=Boolean),
        or_(Ticket.team.is_(None), Ticket.team.not_in(bindparam("own_teams", expanding=True))),
    ),
)
# An urgent ticket's escalation goes at once when sla.urgent_escalations_at_once says so.
_IN_HOURS_OR_URGENT = or_(_IN_HOURS, and_(bindparam("urgent_now", type_=Boolean), Ticket.priority == "urgent"))


def _due(query: Select[tuple[Ticket]], *order: Any) -> Select[tuple[Ticket]]:
    """At most a batch of them, oldest first."""
    return query.order_by(*order, Ticket.id).limit(bindparam("batch", type_=Integer))


def _not_fired(kind: str, level: int, deadline: Any) -> ColumnElement[bool]:
    return ~exists().where(
        SlaFiring.ticket_id == Ticket.id,
        SlaFiring.kind == kind,
        SlaFiring.level == level,
        SlaFiring.deadline == deadline,
    )


def _stamp(moment: datetime) -> str:
    return f"{moment:%Y%m%dT%H%M%S}"


LIVE = Ticket.imported.is_(False)
Column = InstrumentedAttribute[Any]
# Each target: its warning instant, its deadline, and its stage (how far it got: models.SlaStage).
# The queries name the stage, so the tickets handled before drop out of the index range: a scan
# reads the tickets whose moment has come, not every ticket ever overdue.
TARGETS: tuple[tuple[str, Column, Column, Column], ...] = (
    ("first_response", Ticket.first_response_warn_at, Ticket.first_response_due, Ticket.first_response_stage),
    ("resolution", Ticket.resolution_warn_at, Ticket.resolution_due, Ticket.resolution_stage),
)


def _advance(ticket: Ticket, stage: Column, to: SlaStage) -> None:
    """Also when another daemon fired first: it did the same, and this keeps the ticket out of
    the next query either way."""
    if getattr(ticket, stage.key) < to:
        setattr(ticket, stage.key, to)


def _target_unmet(target: str) -> ColumnElement[bool]:
    return Ticket.first_response_at.is_(None) if target == "first_response" else true()


def _any_target(settings: Settings) -> bool:
    sla = settings.sla
    layers = [sla.targets, *(t.targets for t in sla.teams.values()), *(c.targets for c in sla.categories.values())]
    return bool(settings.tickets.first_response_hours) or any(
        t.first_response or t.resolution for layer in layers for t in layer.values()
    )


_WITHOUT_DEADLINES = _due(
    select(Ticket).where(
        Ticket.status.in_((*OPEN, Status.PENDING)),
        LIVE,
        Ticket.first_response_due.is_(None),
        Ticket.resolution_due.is_(None),
        _not_fired("deadlines", 0, Ticket.created_at),
    ),
    Ticket.created_at,
)


def set_missing_deadlines(session: Session, settings: Settings, now: datetime) -> int:
    """Tickets opened before there were targets (a release without SLA, or none configured) have
    no deadlines, and the other scans would never find them. Each gets them once, as at its
    creation under today's policy; a firing row marks it done (also when no target applies to
    it), and an event on the ticket says where the deadlines came from. One long overdue is
    then escalated by `escalate` like any other: once, at the level it has reached."""
    if not _any_target(settings):
        return 0  # nothing to compute: no firing rows, no events for a desk without targets
    run, done = _Run(session, settings, now), 0
    for ticket in run.tickets(_WITHOUT_DEADLINES):
        if not fire(session, ticket, kind="deadlines", level=0, deadline=ticket.created_at, now=now):
            continue
        policy.recompute(settings, ticket, now)
        due = {"first response": ticket.first_response_due, "resolution": ticket.resolution_due}
        said = ", ".join(f"{name} due {at.isoformat(timespec='minutes')}" for name, at in due.items() if at)
        tickets.record(
            session,
            ticket,
            actor=ACTOR,
            action="deadlines",
            channel=CHANNEL,
            at=now,
            new=said or "no target applies",
            evidence="set by the SLA scan: the ticket had none (opened before the SLA targets applied)",
        )
        done += 1
    return done


_PENDING_UNTIL_PASSED = _due(
    select(Ticket).where(
        Ticket.status == Status.PENDING,
        Ticket.pending_until.is_not(None),
        Ticket.pending_until <= bindparam("now"),
        _not_fired("resume", 0, Ticket.pending_until),
    ),
    Ticket.pending_until,
)


def resume_pending(session: Session, settings: Settings, now: datetime) -> int:
    run, done = _Run(session, settings, now), 0
    for ticket in run.tickets(_PENDING_UNTIL_PASSED):
        until = ticket.pending_until
        assert until is not None
        if not fire(session, ticket, kind="resume", level=0, deadline=until, now=now):
            continue
        # The pause ends at the date asked for, not at this run: a daemon that was down does not
        # stretch it.
        tickets.set_status(session, ticket, Status.OPEN, actor=ACTOR, channel=CHANNEL, now=until)
        policy.recompute(settings, ticket, now)
        done += 1
    return done


def _to_warn(target: str, warn_at: Column, due: Column, stage: Column) -> Select[tuple[Ticket]]:
    query = select(Ticket).where(
        Ticket.status.in_(OPEN),
        stage == SlaStage.NONE,
        LIVE,
        warn_at <= bindparam("now"),
        due > bindparam("now"),  # past the deadline it is an escalation, not a warning
        _target_unmet(target),
        _not_fired(f"warning:{target}", 1, due),
        _IN_HOURS,
    )
    return _due(query, warn_at)


_TO_WARN = {target: _to_warn(target, warn_at, due, stage) for target, warn_at, due, stage in TARGETS}


def warn(session: Session, settings: Settings, now: datetime) -> int:
    run, done = _Run(session, settings, now), 0
    for target, _, due, stage in TARGETS:
        kind = f"warning:{target}"
        for ticket in run.tickets(_TO_WARN[target], **run.hours("warning")):
            deadline = getattr(ticket, due.key)
            to = routing.assignee_or_dispatcher(session, settings, ticket, now)
            fired = fire(session, ticket, kind=kind, level=1, deadline=deadline, now=now, recipient=to.address)
            _advance(ticket, stage, SlaStage.WARNED)
            if fired:
                context = {"target": target, "due": run.mail.time(deadline, to)}
                run.mail.send("sla_warning", ticket, to, f"{target}:{_stamp(deadline)}", context)
                done += 1
    return done


def _level_two_at(run: _Run, ticket: Ticket, deadline: datetime) -> datetime:
    calendar = run.calendar(ticket.team)
    return calendar.add(deadline, run.settings.sla.escalate_again_after.resolve(policy.day_length(calendar)))


def _breached(target: str, due: Column, stage: Column) -> tuple[Select[tuple[Ticket]], Select[tuple[Ticket]]]:
    """The tickets to escalate for the first time, and those escalated once whose deadline is at
    least the shortest wait for level 2 ago (second_before)."""
    kind = f"escalation:{target}"
    breached = and_(
        Ticket.status.in_(OPEN),
        LIVE,
        due <= bindparam("now"),
        _target_unmet(target),
        _not_fired(kind, 2, due),
        _IN_HOURS_OR_URGENT,
    )
    first = select(Ticket).where(breached, stage.in_((SlaStage.NONE, SlaStage.WARNED)), _not_fired(kind, 1, due))
    second = select(Ticket).where(breached, stage == SlaStage.ESCALATED, due <= bindparam("second_before"))
    return _due(first, due), _due(second, due)


_BREACHED = {target: _breached(target, due, stage) for target, _, due, stage in TARGETS}


def escalate(session: Session, settings: Settings, now: datetime) -> int:
    run, done = _Run(session, settings, now), 0
    # A lower bound of level 2's wait in any calendar, so the query can leave out the rest.
    soonest = timedelta(minutes=settings.sla.escalate_again_after.minutes)
    params = {"second_before": now - soonest, **run.hours("escalation")}  # for both queries
    for target, _, due, stage in TARGETS:
        first, second = _BREACHED[target]
        for ticket in run.tickets(first, **params):
            deadline = getattr(ticket, due.key)
            # Found late (the daemon was down): the level it has reached, and only that one.
            level = 2 if now >= _level_two_at(run, ticket, deadline) else 1
            done += _escalation(run, ticket, target, deadline, level)
            _advance(ticket, stage, SlaStage.ESCALATED_AGAIN if level == 2 else SlaStage.ESCALATED)
        for ticket in run.tickets(second, **params):
            deadline = getattr(ticket, due.key)
            if now >= _level_two_at(run, ticket, deadline):
                done += _escalation(run, ticket, target, deadline, 2)
                _advance(ticket, stage, SlaStage.ESCALATED_AGAIN)
            elif not run.settings.sla.teams:
                break  # one calendar: the later deadlines reach level 2 later still
    return done


def _escalation(run: _Run, ticket: Ticket, target: str, deadline: datetime, level: int) -> int:
    session, settings, now = run.session, run.settings, run.now
    to = routing.person(session, settings, routing.escalation_address(settings, ticket, level), now)
    kind = f"escalation:{target}"
    if not fire(session, ticket, kind=kind, level=level, deadline=deadline, now=now, recipient=to.address):
        return 0
    context = {
        "target": target,
        "level": level,
        "due": run.mail.time(deadline, to),
        "assignee": ticket.assignee,
    }
    run.mail.send("sla_escalation", ticket, to, f"{target}:{level}:{_stamp(deadline)}", context)
    return 1


def _once_since(kind: str, moment: Column, *where: ColumnElement[bool]) -> Select[tuple[Ticket]]:
    """Live tickets matching `where` whose `moment` is before the parameter `before`, not told
    of it yet (a firing of `kind` for that moment), in the opening hours of their calendar."""
    query = select(Ticket).where(*where, LIVE, moment <= bindparam("before"), _not_fired(kind, 1, moment), _IN_HOURS)
    return _due(query, moment)


_UNASSIGNED = _once_since("unassigned", Ticket.created_at, Ticket.status.in_(OPEN), Ticket.assignee_id.is_(None))


def unassigned(session: Session, settings: Settings, now: datetime) -> int:
    hours = settings.sla.unassigned_after_hours
    if not hours:
        return 0
    run, done = _Run(session, settings, now), 0
    opened_before = now - timedelta(hours=hours)
    for ticket in run.tickets(_UNASSIGNED, before=opened_before, **run.hours("unassigned")):
        to = routing.assignee_or_dispatcher(session, settings, ticket, now)
        if fire(session, ticket, kind="unassigned", level=1, deadline=ticket.created_at, now=now, recipient=to.address):
            context = {"opened": run.mail.time(ticket.created_at, to), "hours": f"{hours:g}"}
            run.mail.send("sla_unassigned", ticket, to, _stamp(ticket.created_at), context)
            done += 1
    return done


_IDLE = _once_since(
    "idle",
    Ticket.last_activity_at,
    Ticket.status == Status.OPEN,
    Ticket.idle_reminded.is_(False),
    Ticket.assignee_id.is_not(None),
)


def idle(session: Session, settings: Settings, now: datetime) -> int:
    hours = settings.sla.idle_after_hours
    if not hours:
        return 0
    run, done = _Run(session, settings, now), 0
    quiet_since = now - timedelta(hours=hours)
    for ticket in run.tickets(_IDLE, before=quiet_since, **run.hours("idle")):
        to = ticket.assignee
        assert to is not None
        last = ticket.last_activity_at
        fired = fire(session, ticket, kind="idle", level=1, deadline=last, now=now, recipient=to.address)
        ticket.idle_reminded = True
        if fired:
            context = {"last_activity": run.mail.time(last, to), "hours": f"{hours:g}"}
            run.mail.send("sla_idle", ticket, to, _stamp(last), context)
            done += 1
    return done


# Those pending since before asked_before without a reminder of this level or a later one.
_TO_REMIND = _due(
    select(Ticket).where(
        Ticket.status == Status.PENDING,
        LIVE,
        Ticket.pending_until.is_(None),  # waiting for a date: nothing to remind of
        Ticket.pending_since <= bindparam("asked_before"),
        ~exists().where(
            SlaFiring.ticket_id == Ticket.id,
            SlaFiring.kind.in_(("pending_reminder", "auto_resolve")),
            SlaFiring.level >= bindparam("level", type_=Integer),
            SlaFiring.deadline == Ticket.pending_since,
        ),
        _IN_HOURS,
    ),
    Ticket.pending_since,
)


def remind_pending(session: Session, settings: Settings, now: datetime) -> int:
    """Level n (1 … pending_reminders) is the n-th reminder, the level after them the
    resolution. Highest level first, and a level counts as done when any higher one is: a
    ticket found late gets the one mail it is due, not every reminder it missed."""
    every, count = settings.sla.pending_reminder_days, settings.sla.pending_reminders
    if not every:
        return 0
    run, done = _Run(session, settings, now), 0
    for level in range(count + 1, 0, -1):
        resolve = level == count + 1
        kind = "auto_resolve" if resolve else "pending_reminder"
        asked_before = now - timedelta(days=every * level)
        for ticket in run.tickets(_TO_REMIND, level=level, asked_before=asked_before, **run.hours(kind)):
            since = ticket.pending_since
            assert since is not None
            to = ticket.requester
            if not fire(session, ticket, kind=kind, level=level, deadline=since, now=now, recipient=to.address):
                continue
            context = {
                "asked": run.mail.time(since, to),
                "reminder": level,
                "reminders": count,
                "resolve_on": run.mail.time(since + timedelta(days=every * (count + 1)), to),
            }
            if resolve:
                tickets.set_status(session, ticket, Status.RESOLVED, actor=ACTOR, channel=CHANNEL, now=now)
                run.mail.send("sla_auto_resolved", ticket, to, _stamp(since), context)
            else:
                run.mail.send("sla_pending_reminder", ticket, to, f"{level}:{_stamp(since)}", context)
            done += 1
    return done


_TO_CLOSE = _once_since("auto_close", Ticket.resolved_at, Ticket.status == Status.RESOLVED)


def close_resolved(session: Session, settings: Settings, now: datetime) -> int:
    days = settings.sla.close_resolved_after_days
    if not days:
        return 0
    run, done = _Run(session, settings, now), 0
    resolved_before = now - timedelta(days=days)
    for ticket in run.tickets(_TO_CLOSE, before=resolved_before, **run.hours("auto_close")):
        resolved = ticket.resolved_at
        assert resolved is not None
        to = ticket.requester
        if fire(session, ticket, kind="auto_close", level=1, deadline=resolved, now=now, recipient=to.address):
            tickets.set_status(session, ticket, Status.CLOSED, actor=ACTOR, channel=CHANNEL, now=now)
            context = {"resolved": run.mail.time(resolved, to), "days": f"{days:g}"}
            run.mail.send("sla_closed", ticket, to, _stamp(resolved), context)
            done += 1
    return done


# In this order: a ticket given its deadlines or resumed now can be warned in the same run.
SCANS: tuple[tuple[str, Scan], ...] = (
    ("deadlines", set_missing_deadlines),
    ("resume_pending", resume_pending),
    ("warn", warn),
    ("escalate", escalate),
    ("unassigned", unassigned),
    ("idle", idle),
    ("remind_pending", remind_pending),
    ("close_resolved", close_resolved),
)


def run_all(session: Session, settings: Settings, now: datetime) -> dict[str, int]:
    """Every scan once, as of `now`, in one transaction the caller commits."""
    return {name: scan(session, settings, now) for name, scan in SCANS}
