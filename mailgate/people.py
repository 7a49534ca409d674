"""People: the only module that changes a person. The person behind an address, with role and
team from the staff list in the config, and whether we can still mail them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate import tickets
from mailgate.addresses import fold_address
from mailgate.config import Settings
from mailgate.models import Message, Person, Ticket


def find_or_create_person(session: Session, address: str, name: str, now: datetime) -> Person:
    """The person with `address`, created when new; a name is learnt when we had none."""
    address = address.lower()
    person = session.scalar(select(Person).where(Person.address == address))
    if person is None:
        person = Person(address=address, name=name, created_at=now)
        session.add(person)
        session.flush()
    elif name and not person.name:
        person.name = name
    return person


def person_for(session: Session, settings: Settings, address: str, name: str, now: datetime) -> Person:
    """The person behind `address`, with the role and team the config gives them today.
    A staff member's alias is that staff member: one person, however they write."""
    member = settings.staff_member(address)
    if member is not None:
        address = member.address
    person = find_or_create_person(session, address, name, now)
    if person.address == settings.addresses.dispatcher:
        role, team, name = "dispatcher", person.team, person.name
        if member is not None:
            team, name = (member.all_teams or [""])[0], member.name or person.name
    elif member is not None:
        role, team, name = member.role, (member.all_teams or [""])[0], member.name or person.name
    elif person.is_staff:
        # Taken off the staff list: no more threading into any ticket by its tag alone.
        role, team, name = "requester", person.team, person.name
    else:
        _from_directory(settings, person)
        return person
    # Set only what changes: an object marked dirty costs a flush at the next query.
    if (person.role, person.team, person.name) != (role, team, name):
        person.role, person.team, person.name = role, team, name
    return person


def _from_directory(settings: Settings, person: Person) -> None:
    """Name, department and location as the directory lists them (a ticket copies the last two)."""
    entry = next((r for r in settings.requesters if r.address == person.address), None)
    if entry is None:
        return
    known = (entry.name or person.name, entry.department, entry.location)
    if (person.name, person.department, person.location) != known:  # a dirty object costs a flush
        person.name, person.department, person.location = known


def dispatcher(session: Session, settings: Settings, now: datetime) -> Person:
    """The person who runs the desk: told of every new ticket."""
    return person_for(session, settings, settings.addresses.dispatcher, "Dispatcher", now)


def is_own_address(settings: Settings, address: str) -> bool:
    """One of our addresses, in any form that reaches it: plus variants (support+token@…),
    quoted ("support"@…), a trailing dot on the domain, any case."""
    return fold_address(address) in {fold_address(own) for own in settings.addresses.all_own()}


def mark_undeliverable(
    session: Session,
    person_id: int,
    failed: Mapping[str, str],
    *,
    ticket: Ticket,
    channel: str,
    now: datetime,
) -> bool:
    """Our mail on `ticket` to person `person_id` failed for good: stop mailing them, if their
    address is among `failed` (address -> the failure, e.g. "5.1.1 user unknown").

    True when the person was marked now (the ticket's history says so); False when their address
    is not among the failures, or they were marked before.
    """
    person = session.get(Person, person_id)
    if person is None or person.undeliverable_since is not None or person.address not in failed:
        return False
    person.undeliverable_since = now
    person.undeliverable_reason = failed[person.address][:2000]
    tickets.record(
        session,
        ticket,
        actor="mailgate",
        action="undeliverable",
        channel=channel,
        at=now,
        field="address",
        new=f"{person.address}: {person.undeliverable_reason}",
    )
    return True


# Mails of a ticket read to tell whether someone on it is a robot: a bound on the cost.
_ROBOT_MAILS = 200


def robots(session: Session, ticket: Ticket, people: list[Person]) -> set[int]:
    """Those of `people` whose every mail on `ticket` was automatic (a monitoring system, a
    no-reply address, a report): the relay never writes to a robot, which may answer in turn.
    Someone who never wrote (named by #requester or #cc, or forwarded on their behalf) is no robot."""
    ids = [p.id for p in people]
    if not ids:
        return set()
    mails = session.execute(
        select(Message.sender_id, Message.auto_reasons)
        .where(Message.ticket_id == ticket.id, Message.sender_id.in_(ids))
        .order_by(Message.id)
        .limit(_ROBOT_MAILS)
    )
    automatic: dict[int, bool] = {}
    for sender_id, reasons in mails:
        automatic[sender_id] = automatic.get(sender_id, True) and bool(reasons)
    return {person_id for person_id, robot in automatic.items() if robot}
