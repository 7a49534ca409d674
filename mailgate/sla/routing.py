"""Who hears of what the SLA scans find: the assignee of a warning, the team lead or the
assignee's manager of a breach, the dispatcher of an unassigned ticket.

Managers come from the directory ([[staff]] manager, [[requesters]] and directory.csv manager);
a team lead from [sla.teams.<team>] lead. Where the directory names no one, escalation_address,
and where that is empty, the dispatcher: an escalation never goes nowhere.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgate import people
from mailgate.config import Settings
from mailgate.models import Person, Ticket


def manager_of(settings: Settings, address: str) -> str:
    for entry in (*settings.staff, *settings.requesters):
        if entry.address == address and entry.manager:
            return entry.manager.lower()
    return ""


def assignee_or_dispatcher(session: Session, settings: Settings, ticket: Ticket, now: datetime) -> Person:
    return ticket.assignee or person(session, settings, settings.addresses.dispatcher, now)


def escalation_address(settings: Settings, ticket: Ticket, level: int) -> str:
    """Level 1: the team's lead, else the assignee's manager; level 2: the manager of whoever
    level 1 reached. Else sla.escalation_address, else the dispatcher."""
    sla = settings.sla
    team = sla.teams.get(ticket.team or "")
    first = (team.lead if team is not None else "") or (
        manager_of(settings, ticket.assignee.address) if ticket.assignee is not None else ""
    )
    chosen = first if level == 1 else manager_of(settings, first) if first else ""
    return chosen or sla.escalation_address or settings.addresses.dispatcher


def person(session: Session, settings: Settings, address: str, now: datetime) -> Person:
    """The person at `address`, created in a savepoint: another daemon scanning at the same time
    may create them first, and that must not undo what this run did so far."""
    try:
        with session.begin_nested():
            return people.person_for(session, settings, address, "", now)
    except IntegrityError:
        return people.person_for(session, settings, address, "", now)
