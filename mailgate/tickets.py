"""Domain operations on tickets: the only module that changes a ticket, and it writes the events."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailgate.models import Counter, Event, Participant, Person, SlaStage, Status, Ticket, TicketLink


def next_ticket_number(session: Session) -> int:
    # UPDATE … RETURNING locks the counter row until commit: two daemons never share a number.
    number = session.scalar(
        update(Counter).where(Counter.name == "ticket").values(value=Counter.value + 1).returning(Counter.value)
    )
    if number is None:
        raise RuntimeError("ticket counter missing: run `mailgate db upgrade`")
    return int(number)


def record(
    session: Session,
    ticket: Ticket | None,
    *,
    actor: str,
    action: str,
    channel: str,
    at: datetime,
    field: str | None = None,
    old: str | None = None,
    new: str | None = None,
    message_id: int | None = None,
    evidence: str = "",
) -> Event:
    event = Event(
        ticket_id=ticket.id if ticket else None,
        actor=actor,
        action=action,
        channel=channel,
        at=at,
        field=field,
        old=old,
        new=new,
        message_id=message_id,
        evidence=evidence,
    )
    session.add(event)
    return event


def add_participant(session: Session, ticket: Ticket, person: Person, role: str, *, new_ticket: bool = False) -> bool:
    """`person` takes part in `ticket` from now on; False when they already did. new_ticket:
    the ticket was opened in this transaction and `person` was not added yet: no query needed."""
    if not new_ticket:
        exists = session.scalar(
            select(Participant.id).where(Participant.ticket_id == ticket.id, Participant.person_id == person.id)
        )
        if exists is not None:
            return False
    session.add(Participant(ticket_id=ticket.id, person_id=person.id, role=role))
    return True


def create_ticket(
    session: Session,
    *,
    subject: str,
    requester: Person,
    priority: str,
    channel: str,
    now: datetime,
    first_response_due: datetime | None,
) -> Ticket:
    ticket = Ticket(
        number=next_ticket_number(session),
        subject=subject or "(no subject)",
        requester_id=requester.id,
        status=Status.NEW,
        priority=priority,
        department=requester.department,
        location=requester.location,
        created_at=now,
        last_activity_at=now,
        first_response_due=first_response_due,
    )
    session.add(ticket)
    session.flush()
    add_participant(session, ticket, requester, "requester", new_ticket=True)
    record(
        session,
        ticket,
        actor=requester.address,
        action="created",
        channel=channel,
        at=now,
        new=ticket.subject,
    )
    return ticket


def link(
    session: Session,
    ticket: Ticket,
    other: Ticket,
    kind: str,
    *,
    channel: str,
    now: datetime,
    actor: str = "mailgate",
    evidence: str = "",
    message_id: int | None = None,
) -> bool:
    """`ticket` refers to `other`; False when it did already."""
    exists = session.scalar(
        select(TicketLink.id).where(
            TicketLink.ticket_id == ticket.id, TicketLink.other_id == other.id, TicketLink.kind == kind
        )
    )
    if exists is not None:
        return False
    session.add(TicketLink(ticket_id=ticket.id, other_id=other.id, kind=kind))
    record(
        session,
        ticket,
        actor=actor,
        action="linked",
        channel=channel,
        at=now,
        field=kind,
        new=str(other.number),
        evidence=evidence,
        message_id=message_id,
    )
    return True


def unlink(
    session: Session, ticket: Ticket, other: Ticket, kind: str, *, actor: str, channel: str, now: datetime
) -> None:
    """#undo of a #link."""
    row = session.scalar(
        select(TicketLink).where(
            TicketLink.ticket_id == ticket.id, TicketLink.other_id == other.id, TicketLink.kind == kind
        )
    )
    if row is not None:
        session.delete(row)
        record(
            session, ticket, actor=actor, action="unlinked", field=kind, old=str(other.number), channel=channel, at=now
        )


def assign(
    session: Session,
    ticket: Ticket,
    person: Person | None,
    *,
    actor: str,
    channel: str,
    now: datetime,
    evidence: str = "",
    message_id: int | None = None,
) -> None:
    """`person` works on `ticket` from now on (None: nobody). The assignee is on the ticket:
    their mail threads into it by its tag."""
    if ticket.assignee_id == (person.id if person else None):
        return
    old = ticket.assignee.address if ticket.assignee else None
    ticket.assignee = person
    record(
        session,
        ticket,
        actor=actor,
        action="assigned",
        field="assignee",
        old=old,
        new=person.address if person else None,
        channel=channel,
        at=now,
        evidence=evidence,
        message_id=message_id,
    )


def set_status(
    session: Session,
    ticket: Ticket,
    status: Status,
    *,
    actor: str,
    channel: str,
    now: datetime,
    evidence: str = "",
    message_id: int | None = None,
) -> None:
    if ticket.status == status:
        return
    old = ticket.status
    ticket.status = status
    if status == Status.RESOLVED:
        ticket.resolved_at = now
    elif status == Status.CLOSED:
        ticket.closed_at = now
    elif old in (Status.RESOLVED, Status.CLOSED):
        ticket.resolved_at = ticket.closed_at = None
    _keep_pause(ticket, old, status, now)
    record(
        session,
        ticket,
        actor=actor,
        action="status",
        field="status",
        old=old,
        new=status,
        channel=channel,
        at=now,
        evidence=evidence,
        message_id=message_id,
    )


def _keep_pause(ticket: Ticket, old: str, new: str, now: datetime) -> None:
    """The SLA clock stands still while a ticket is pending: entering starts a pause, leaving
    ends it. Counting the pause in business time needs the calendar: sla.policy.recompute."""
    if new == Status.PENDING:
        ticket.pending_since = now
    elif old == Status.PENDING and ticket.pending_since is not None:
        # A new list, so that the ORM sees the JSON change.
        ticket.pauses = [*(ticket.pauses or []), [ticket.pending_since.isoformat(), now.isoformat()]]
        ticket.pending_since = ticket.pending_until = None


def set_pending(
    session: Session, ticket: Ticket, until: datetime | None, *, actor: str, channel: str, now: datetime
) -> None:
    """`ticket` waits on its requester, until their reply or `until` (#pending until), when the
    SLA scan sets it open again. Call sla.policy.recompute afterwards."""
    set_status(session, ticket, Status.PENDING, actor=actor, channel=channel, now=now)
    set_pending_until(session, ticket, until, actor=actor, channel=channel, now=now)


def is_past_reopen_window(ticket: Ticket, now: datetime, window_days: int) -> bool:
    """A closed ticket past the window takes no more replies: they open a follow-up ticket."""
    if ticket.status != Status.CLOSED:
        return False
    closed = ticket.closed_at or ticket.last_activity_at
    return now - closed > timedelta(days=window_days)


def message_added(
    session: Session,
    ticket: Ticket,
    sender: Person,
    *,
    channel: str,
    now: datetime,
    answer: bool = True,
    moves_status: bool = True,
) -> None:
    """Someone wrote on the ticket. The requester answering a resolved, closed (within the
    window) or pending ticket needs us again. A Cc's "thanks, works for me too" changes no
    status. Staff mail is no first response by itself: only a proven staff member's answer
    that reached the requester is (see answered); a From header proves nothing. `answer`
    False: the mail answers nobody (an internal note, a mail of commands only); `moves_status`
    False: its commands set the status, the conversation does not."""
    ticket.last_activity_at = now
    if ticket.idle_reminded:  # a new quiet spell starts now (sla/scans.py idle)
        ticket.idle_reminded = False
    if not answer or not moves_status:
        return
    if sender.is_staff and sender.id != ticket.requester_id:
        return
    if sender.id == ticket.requester_id and ticket.status in (Status.RESOLVED, Status.CLOSED, Status.PENDING):
        set_status(session, ticket, Status.OPEN, actor=sender.address, channel=channel, now=now)


def answered(
    session: Session, ticket: Ticket, agent: Person, *, channel: str, now: datetime, message_id: int, evidence: str
) -> None:
    """Proven staff member `agent` answered the requester (the relay sent it): the first such
    answer is the ticket's first response, recorded with what proved who wrote it."""
    if ticket.first_response_at is not None:
        return
    ticket.first_response_at = now
    ticket.first_response_stage = SlaStage.MET  # the SLA scans stop watching this target
    record(
        session,
        ticket,
        actor=agent.address,
        action="first_response",
        channel=channel,
        at=now,
        message_id=message_id,
        evidence=evidence,
    )


def opened_on_behalf(
    session: Session,
    ticket: Ticket,
    requester: Person,
    forwarder: Person,
    *,
    evidence: str,
    channel: str,
    now: datetime,
) -> None:
    """`forwarder`, a proven staff member, forwarded `requester`'s mail and so opened `ticket`
    for them: the forwarder watches it, and the audit trail says who did it by which evidence."""
    add_participant(session, ticket, forwarder, "watcher", new_ticket=True)
    record(
        session,
        ticket,
        actor=forwarder.address,
        action="on_behalf",
        field="requester",
        new=f"opened on behalf of {requester.address} by {forwarder.address}",
        channel=channel,
        at=now,
        evidence=evidence,
    )


# -- the dispatcher desk's commands: each change an event naming the command mail and its proof --


def set_field(
    session: Session,
    ticket: Ticket,
    field: str,
    value: str | None,
    *,
    actor: str,
    channel: str,
    now: datetime,
    evidence: str = "",
    message_id: int | None = None,
) -> bool:
    """Set `ticket`.`field` (priority, category or team); False when it had that value already.
    The caller recomputes the SLA deadlines (sla.policy.set_deadlines)."""
    assert field in ("priority", "category", "team", "alert_key"), field
    old = getattr(ticket, field)
    if old == value:
        return False
    setattr(ticket, field, value)
    record(
        session,
        ticket,
        actor=actor,
        action=field,
        field=field,
        old=old,
        new=value,
        channel=channel,
        at=now,
        evidence=evidence,
        message_id=message_id,
    )
    return True


def set_priority(session: Session, ticket: Ticket, priority: str, **how: object) -> bool:
    return set_field(session, ticket, "priority", priority, **how)  # type: ignore[arg-type]


def set_category(session: Session, ticket: Ticket, category: str | None, **how: object) -> bool:
    return set_field(session, ticket, "category", category, **how)  # type: ignore[arg-type]


def set_team(session: Session, ticket: Ticket, team: str | None, **how: object) -> bool:
    return set_field(session, ticket, "team", team, **how)  # type: ignore[arg-type]


def set_alert_key(session: Session, ticket: Ticket, key: str, *, channel: str, now: datetime, evidence: str) -> None:
    """`ticket` is the one for alert `key` (routing/alerts.py): its repeats go on it while it is open."""
    set_field(session, ticket, "alert_key", key, actor="mailgate", channel=channel, now=now, evidence=evidence)


def set_pending_until(
    session: Session,
    ticket: Ticket,
    until: datetime | None,
    *,
    actor: str,
    channel: str,
    now: datetime,
    evidence: str = "",
    message_id: int | None = None,
) -> None:
    old = ticket.pending_until
    if old == until:
        return
    ticket.pending_until = until
    record(
        session,
        ticket,
        actor=actor,
        action="pending_until",
        field="pending_until",
        old=old.isoformat() if old else None,
        new=until.isoformat() if until else None,
        channel=channel,
        at=now,
        evidence=evidence,
        message_id=message_id,
    )


def set_requester(
    session: Session,
    ticket: Ticket,
    person: Person,
    *,
    actor: str,
    channel: str,
    now: datetime,
    evidence: str = "",
    message_id: int | None = None,
) -> bool:
    """`person` asked for `ticket` (fixing who a forwarded mail opened it for). The earlier
    requester stays on it as a cc, so their mail still threads."""
    if ticket.requester_id == person.id:
        return False
    old = ticket.requester
    for row in session.scalars(select(Participant).where(Participant.ticket_id == ticket.id)):
        if row.person_id == old.id:
            row.role = "cc"
        elif row.person_id == person.id:
            session.delete(row)
    session.flush()
    ticket.requester = person
    ticket.department, ticket.location = person.department, person.location
    session.add(Participant(ticket_id=ticket.id, person_id=person.id, role="requester"))
    record(
        session,
        ticket,
        actor=actor,
        action="requester",
        field="requester",
        old=old.address,
        new=person.address,
        channel=channel,
        at=now,
        evidence=evidence,
        message_id=message_id,
    )
    return True


def add_cc(
    session: Session,
    ticket: Ticket,
    person: Person,
    *,
    actor: str,
    channel: str,
    now: datetime,
    evidence: str = "",
    message_id: int | None = None,
) -> bool:
    """`person` watches `ticket` (a cc); False when they are on it already."""
    if not add_participant(session, ticket, person, "cc"):
        return False
    record(
        session,
        ticket,
        actor=actor,
        action="cc",
        field="cc",
        new=person.address,
        channel=channel,
        at=now,
        evidence=evidence,
        message_id=message_id,
    )
    return True


def remove_cc(
    session: Session,
    ticket: Ticket,
    person: Person,
    *,
    actor: str,
    channel: str,
    now: datetime,
    evidence: str = "",
    message_id: int | None = None,
) -> bool:
    """`person` no longer watches `ticket`; False when they were no cc of it (the requester
    stays the requester)."""
    row = session.scalar(
        select(Participant).where(
            Participant.ticket_id == ticket.id, Participant.person_id == person.id, Participant.role == "cc"
        )
    )
    if row is None:
        return False
    session.delete(row)
    record(
        session,
        ticket,
        actor=actor,
        action="cc",
        field="cc",
        old=person.address,
        channel=channel,
        at=now,
        evidence=evidence,
        message_id=message_id,
    )
    return True


def merge(
    session: Session,
    ticket: Ticket,
    into: Ticket,
    *,
    actor: str,
    channel: str,
    now: datetime,
    evidence: str = "",
    message_id: int | None = None,
) -> None:
    """`ticket` is the same request as `into`: its people join `into`, it is closed, and later
    mail to it goes on `into` (thread.py follows merged_into_id)."""
    people = session.scalars(select(Participant).where(Participant.ticket_id == ticket.id))
    for person_id in [row.person_id for row in people]:
        exists = session.scalar(
            select(Participant.id).where(Participant.ticket_id == into.id, Participant.person_id == person_id)
        )
        if exists is None:
            session.add(Participant(ticket_id=into.id, person_id=person_id, role="cc"))
    ticket.merged_into_id = into.id
    how = {"actor": actor, "channel": channel, "at": now, "evidence": evidence, "message_id": message_id}
    record(session, ticket, action="merged", field="merged_into", new=str(into.number), **how)  # type: ignore[arg-type]
    record(session, into, action="merged", field="merged_from", new=str(ticket.number), **how)  # type: ignore[arg-type]
    set_status(
        session, ticket, Status.CLOSED, actor=actor, channel=channel, now=now, evidence=evidence, message_id=message_id
    )


def unmerge(session: Session, ticket: Ticket, *, actor: str, channel: str, now: datetime, evidence: str = "") -> None:
    """#undo of a merge: later mail goes on `ticket` again (its status is reverted apart)."""
    old = ticket.merged_into_id
    ticket.merged_into_id = None
    record(
        session,
        ticket,
        actor=actor,
        action="unmerged",
        field="merged_into",
        old=str(old),
        channel=channel,
        at=now,
        evidence=evidence,
    )
