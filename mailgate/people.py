"""People: the person behind an address, with role and team from the staff list in the config."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from mailgate import tickets
from mailgate.config import Settings
from mailgate.models import Person


def person_for(session: Session, settings: Settings, address: str, name: str, now: datetime) -> Person:
    person = tickets.find_or_create_person(session, address, name, now)
    member = next((m for m in settings.staff if m.address == person.address), None)
    if person.address == settings.addresses.dispatcher:
        role, team, name = "dispatcher", person.team, person.name
    elif member is not None:
        role, team, name = member.role, member.team, member.name or person.name
    elif person.is_staff:
        # Taken off the staff list: no more threading into any ticket by its tag alone.
        role, team, name = "requester", person.team, person.name
    else:
        return person
    # Set only what changes: an object marked dirty costs a flush at the next query.
    if (person.role, person.team, person.name) != (role, team, name):
        person.role, person.team, person.name = role, team, name
    return person


def is_own_address(settings: Settings, address: str) -> bool:
    """One of our addresses, including its plus variants (support+token@…)."""
    local, _, domain = address.partition("@")
    return f"{local.partition('+')[0]}@{domain}" in settings.addresses.all_own()
