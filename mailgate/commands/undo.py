"""#undo: revert the sender's last command mail on a ticket, from the events it wrote.

Every change a command mail made is an event naming the mail (message_id), the field, the old
and the new value, and the proof (evidence). #undo takes the newest such mail of the sender on
the ticket within [commands] undo_window_minutes that was not undone already, sets each field
back in reverse order, and marks the mail undone by an event of its own ("undone", old = the
mail's message id). Messages are never taken back: a note stays a note.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate import tickets
from mailgate.config import Settings
from mailgate.models import Event, Person, Status, Ticket

# Looked at to find the last command mail: a few mails' worth of events.
_SCAN = 200
# The fields a command mail changes and revert() sets back.
_REVERTIBLE = (
    "assignee", "status", "priority", "category", "team", "pending_until", "requester", "cc",
    "merged_into", "merged_from", "related",
)  # fmt: skip


def last_command_mail(
    session: Session, settings: Settings, ticket: Ticket, sender: Person, now: datetime
) -> int | None:
    """The message id of `sender`'s newest command mail on `ticket` that #undo may revert."""
    since = now - timedelta(minutes=settings.commands.undo_window_minutes)
    undone = set(
        session.scalars(
            select(Event.old).where(Event.ticket_id == ticket.id, Event.action == "undone", Event.at >= since)
        )
    )
    rows = session.scalars(
        select(Event.message_id)
        .where(
            Event.ticket_id == ticket.id,
            Event.actor == sender.address,
            Event.evidence != "",
            Event.field.in_(_REVERTIBLE),  # a relayed answer's events name its mail too
            Event.message_id.is_not(None),
            Event.at >= since,
        )
        .order_by(Event.id.desc())
        .limit(_SCAN)
    )
    return next((mid for mid in rows if str(mid) not in undone), None)


def revert(
    session: Session,
    settings: Settings,
    ticket: Ticket,
    message_id: int,
    *,
    actor: str,
    channel: str,
    now: datetime,
    evidence: str,
    undo_message_id: int,
) -> list[dict[str, str]]:
    """Set back what command mail `message_id` changed; the changes, for the receipt. That is
    `ticket` and, for a #merge, the other side of it (the merged ticket, named by the target's
    "merged_from" event: mail to it goes on the target, #undo included)."""
    events = list(
        session.scalars(
            select(Event)
            .where(Event.message_id == message_id, Event.field.is_not(None), Event.ticket_id.is_not(None))
            .order_by(Event.id.desc())
        )
    )
    how = {"actor": actor, "channel": channel, "now": now, "evidence": evidence, "message_id": undo_message_id}
    done: list[dict[str, str]] = []
    for event in events:
        what = event.field or ""
        on = session.get(Ticket, event.ticket_id)
        assert on is not None
        if _changed_since(on, what, event):
            continue  # someone set it again since: their choice stands, not the one before
        if what == "assignee":
            person = _person(session, event.old)
            tickets.assign(session, on, person, **how)  # type: ignore[arg-type]
        elif what == "status":
            tickets.set_status(session, on, Status(event.old or Status.OPEN), **how)  # type: ignore[arg-type]
        elif what in ("priority", "category", "team"):
            tickets.set_field(session, on, what, event.old, **how)  # type: ignore[arg-type]
        elif what == "pending_until":
            until = datetime.fromisoformat(event.old) if event.old else None
            tickets.set_pending_until(session, on, until, **how)  # type: ignore[arg-type]
        elif what == "requester" and (person := _person(session, event.old)) is not None:
            tickets.set_requester(session, on, person, **how)  # type: ignore[arg-type]
        elif what == "cc" and event.new and (person := _person(session, event.new)) is not None:
            tickets.remove_cc(session, on, person, **how)  # type: ignore[arg-type]
        elif what == "cc" and event.old and (person := _person(session, event.old)) is not None:
            tickets.add_cc(session, on, person, **how)  # type: ignore[arg-type]
        elif what == "merged_into":
            tickets.unmerge(session, on, actor=actor, channel=channel, now=now, evidence=evidence)
        elif what == "related" and event.new:
            other = session.scalar(select(Ticket).where(Ticket.number == int(event.new)))
            if other is not None:
                tickets.unlink(session, on, other, "related", actor=actor, channel=channel, now=now)
        else:
            continue
        where = "" if on.id == ticket.id else f" (#{on.number})"
        done.append({"what": what + where, "old": event.new or "-", "new": event.old or "-"})
    tickets.record(
        session,
        ticket,
        actor=actor,
        action="undone",
        old=str(message_id),
        channel=channel,
        at=now,
        evidence=evidence,
        message_id=undo_message_id,
    )
    return done


def _changed_since(ticket: Ticket, what: str, event: Event) -> bool:
    """Whether `ticket`'s `what` is no longer what `event` set it to."""
    if what == "assignee":
        now = ticket.assignee.address if ticket.assignee else None
    elif what == "requester":
        now = ticket.requester.address
    elif what in ("status", "priority", "category", "team"):
        now = getattr(ticket, what)
    else:
        return False
    return (str(now) if now is not None else None) != event.new


def _person(session: Session, address: str | None) -> Person | None:
    return session.scalar(select(Person).where(Person.address == address)) if address else None
