"""Plain-text views of the store for the command line: ticket lists, a thread as a person reads it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from mailgate.models import Event, Message, Outbox, Person, Quarantine, Ticket, TicketLink
from mailgate.outgoing.compose import human_size


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"


def _who(person: Person | None) -> str:
    if person is None:
        return "-"
    return f"{person.name} <{person.address}>" if person.name else person.address


def ticket_list(session: Session, prefix: str, statuses: tuple[str, ...] = ()) -> list[str]:
    query = (
        select(Ticket).options(selectinload(Ticket.requester), selectinload(Ticket.assignee)).order_by(Ticket.number)
    )
    if statuses:
        query = query.where(Ticket.status.in_(statuses))
    lines = []
    for t in session.scalars(query):
        assignee = t.assignee.address if t.assignee else "unassigned"
        lines.append(
            f"{prefix} #{t.number:<6} {t.status:<9} {t.priority:<7} {_when(t.last_activity_at)}  "
            f"{t.requester.address:<30} {assignee:<20} {t.subject}"
        )
    return lines


def ticket_thread(session: Session, prefix: str, number: int) -> list[str] | None:
    ticket = session.scalar(select(Ticket).where(Ticket.number == number))
    if ticket is None:
        return None
    out = [
        f"{prefix} #{ticket.number}: {ticket.subject}",
        f"  status {ticket.status}, priority {ticket.priority}, category {ticket.category or '-'}, "
        f"assignee {_who(ticket.assignee)}",
        f"  requester {_who(ticket.requester)}; opened {_when(ticket.created_at)}, "
        f"first answer due {_when(ticket.first_response_due)}",
    ]
    for link in session.scalars(select(TicketLink).where(TicketLink.ticket_id == ticket.id)):
        other = session.get(Ticket, link.other_id)
        out.append(f"  linked ({link.kind}) to {prefix} #{other.number if other else '?'}")
    items: list[tuple[datetime, int, list[str]]] = []
    for m in session.scalars(
        select(Message).where(Message.ticket_id == ticket.id).options(selectinload(Message.attachments))
    ):
        sender = f"{m.from_name} <{m.from_addr}>" if m.from_name else f"<{m.from_addr}>"
        head = f"--- {_when(m.received_at)}  {sender}  ({m.kind}, {m.source})"
        body = [head, *(m.text_new or "(no text)").splitlines()]
        for a in m.attachments:
            kept = "" if a.stored else f" — NOT KEPT: {a.note}"
            body.append(f"  [attachment] {a.filename} ({a.content_type}, {human_size(a.size)}){kept}")
        if m.auto_reasons:
            body.append(f"  [auto-generated: {'; '.join(m.auto_reasons)}]")
        items.append((m.received_at, 0, body))
    for o in session.scalars(select(Outbox).where(Outbox.ticket_id == ticket.id)):
        head = f"--- {_when(o.created_at)}  to {', '.join(o.recipients)}  ({o.kind}, outbox: {o.state})"
        items.append((o.created_at, 1, [head, f"Subject: {o.headers.get('Subject', '')}", *o.body.splitlines()]))
    for e in session.scalars(select(Event).where(Event.ticket_id == ticket.id)):
        change = f"{e.field}: {e.old} -> {e.new}" if e.field else (e.new or "")
        items.append((e.at, 2, [f"  * {_when(e.at)} {e.action} by {e.actor} via {e.channel} {change}".rstrip()]))
    for _, _, lines in sorted(items, key=lambda i: (i[0], i[1])):
        out.extend(lines)
    return out


def outbox_list(session: Session, state: str | None = None) -> list[str]:
    query = select(Outbox).order_by(Outbox.id)
    if state:
        query = query.where(Outbox.state == state)
    return [
        f"{o.id:<6} {o.state:<7} {o.kind:<15} {', '.join(o.recipients):<30} {o.headers.get('Subject', '')}"
        + (f"  [{o.last_error}]" if o.last_error else "")
        for o in session.scalars(query)
    ]


def quarantine_list(session: Session) -> list[str]:
    return [
        f"{q.id:<6} {_when(q.received_at)} {q.source:<10} {len(q.raw):>9} bytes  "
        + (f"released as {q.released_as}" if q.released_at else q.reason)
        for q in session.scalars(select(Quarantine).order_by(Quarantine.id))
    ]


def message_list(session: Session, prefix: str, *, without_ticket: bool, kind: str | None) -> list[str]:
    query = select(Message, Ticket.number).outerjoin(Ticket, Ticket.id == Message.ticket_id).order_by(Message.id)
    if without_ticket:
        query = query.where(Message.ticket_id.is_(None))
    if kind:
        query = query.where(Message.kind == kind)
    return [
        f"{m.id:<7} {_when(m.received_at)} {m.kind:<10} {f'{prefix} #{number}' if number else '-':<10} "
        f"{m.from_addr:<30} {m.subject}"
        for m, number in session.execute(query)
    ]


def message_detail(session: Session, message_id: int) -> list[str] | None:
    """One stored mail with the decisions mailgate took on it (why no ticket, why no answer …)."""
    m = session.get(Message, message_id)
    if m is None:
        return None
    number = session.scalar(select(Ticket.number).where(Ticket.id == m.ticket_id)) if m.ticket_id else None
    lines = [
        f"message {m.id}: {m.kind}, ticket {number or '-'}, received {_when(m.received_at)} by {m.source}",
        f"  From: {m.from_name} <{m.from_addr}>",
        f"  Subject: {m.subject}",
        f"  Message-ID: <{m.message_id}>" if m.message_id else "  Message-ID: (none)",
        "  decisions:",
        *(f"    {step['step']}: {step['decision']}" for step in m.trace),
        "",
        *(m.text_full or "(no text)").splitlines(),
    ]
    return lines
