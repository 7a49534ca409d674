"""Views of the store for the command line: ticket lists, a thread as a person reads it, stored
mail and its decisions. Each list is rows of plain values first (what `--json` prints), then
lines of text. Every time is shown in the desk's zone (sla.policy.timezone: the zone of its business
hours, in which the deadlines were counted), and says which."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from mailgate.models import Attachment, Event, Message, Outbox, Person, Quarantine, Status, Ticket, TicketLink
from mailgate.outgoing.compose import human_size

UTC = ZoneInfo("UTC")


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    """A time in the desk's zone, without the zone: for columns whose header names it."""
    return f"{moment.astimezone(zone):%Y-%m-%d %H:%M}" if moment else "-"


def _when_labelled(moment: datetime | None, zone: ZoneInfo) -> str:
    """A time in the desk's zone, labelled: "2026-11-23 13:51 (Europe/Berlin)"."""
    return f"{_when(moment, zone)} ({zone.key})" if moment else "-"


def _iso(moment: datetime | None, zone: ZoneInfo) -> str | None:
    return moment.astimezone(zone).isoformat() if moment else None


def _who(person: Person | None) -> str:
    if person is None:
        return "-"
    return f"{person.name} <{person.address}>" if person.name else person.address


@dataclass(frozen=True)
class TicketFilter:
    """What `tickets list` narrows to; every field empty means every ticket."""

    statuses: tuple[str, ...] = ()
    assignee: str = ""  # an address or a name; "none" for unassigned tickets
    team: str = ""
    opened_before: datetime | None = None  # "older than": opened before this moment


def ticket_rows(
    session: Session, prefix: str, only: TicketFilter = TicketFilter(), zone: ZoneInfo = UTC
) -> list[dict[str, Any]]:
    query = (
        select(Ticket).options(selectinload(Ticket.requester), selectinload(Ticket.assignee)).order_by(Ticket.number)
    )
    if only.statuses:
        query = query.where(Ticket.status.in_(only.statuses))
    if only.assignee.lower() == "none":
        query = query.where(Ticket.assignee_id.is_(None))
    elif only.assignee:
        who = only.assignee.lower()
        query = query.join(Person, Person.id == Ticket.assignee_id).where(
            or_(Person.address == who, Person.name.ilike(only.assignee))
        )
    if only.team:
        query = query.where(Ticket.team == only.team)
    if only.opened_before is not None:
        query = query.where(Ticket.created_at < only.opened_before)
    return [
        {
            "number": t.number,
            "tag": f"{prefix} #{t.number}",
            "status": t.status,
            "priority": t.priority,
            "team": t.team,
            "opened": _iso(t.created_at, zone),
            "last_activity": _iso(t.last_activity_at, zone),
            "first_response_due": _iso(t.first_response_due, zone),
            "requester": t.requester.address,
            "assignee": t.assignee.address if t.assignee else None,
            "subject": t.subject,
        }
        for t in session.scalars(query)
    ]


def ticket_list(rows: list[dict[str, Any]], zone: ZoneInfo = UTC) -> list[str]:
    """A header naming the zone of the times, then one line per ticket."""
    width = max((len(r["tag"]) for r in rows), default=0)
    opened = f"opened ({zone.key})"
    lines = [f"{'ticket':<{width}}  {'status':<9} {'prio':<7} {opened:<17}  {'requester':<30} {'assignee':<20} subject"]
    for r in rows:
        opened = _when(datetime.fromisoformat(r["opened"]), zone) if r["opened"] else "-"
        lines.append(
            f"{r['tag']:<{width}}  {r['status']:<9} {r['priority']:<7} {opened:<17}  "
            f"{r['requester']:<30} {r['assignee'] or 'unassigned':<20} {r['subject']}"
        )
    return lines


def deadline_state(ticket: Ticket, due: datetime | None, met: datetime | None, now: datetime) -> str:
    """Where a target stands: "met", "breached" (passed unmet, or met after it), "paused" while
    the ticket waits on the requester (the deadline moves by the pause), "running", or
    "not reached" when the ticket was done before it was due without meeting it."""
    if due is None:
        return "no target"
    if met is not None:
        return "met" if met <= due else "breached"
    if ticket.status == Status.PENDING:
        return "paused"
    done = ticket.resolved_at or ticket.closed_at
    if done is not None:
        return "breached" if due <= done else "not reached"
    return "breached" if due <= now else "running"


def ticket_detail(
    session: Session, prefix: str, number: int, zone: ZoneInfo = UTC, now: datetime | None = None
) -> dict[str, Any] | None:
    """The ticket and everything on it, oldest first: mail in and out, and every change; its
    deadlines as of `now` (default: the wall clock)."""
    now = now or datetime.now(UTC)
    ticket = session.scalar(select(Ticket).where(Ticket.number == number))
    if ticket is None:
        return None
    links = []
    for link in session.scalars(select(TicketLink).where(TicketLink.ticket_id == ticket.id)):
        other = session.get(Ticket, link.other_id)
        links.append({"kind": link.kind, "number": other.number if other else None})
    items: list[tuple[datetime, int, dict[str, Any]]] = []
    for m in session.scalars(
        select(Message).where(Message.ticket_id == ticket.id).options(selectinload(Message.attachments))
    ):
        entry = {
            "type": "message",
            "at": _iso(m.received_at, zone),
            "id": m.id,
            "kind": m.kind,
            "source": m.source,
            "from": _who_of(m.from_name, m.from_addr),
            "text": m.text_new,
            "automatic": list(m.auto_reasons),
            "attachments": [_attachment_row(a) for a in m.attachments],
            # Why nobody was answered: the first thing asked when an acknowledgement is missing.
            "not_answered": [t["decision"] for t in m.trace if t.get("decision", "").startswith("no acknowledgement")],
        }
        items.append((m.received_at, 0, entry))
    for o in session.scalars(select(Outbox).where(Outbox.ticket_id == ticket.id)):
        entry = {
            "type": "outgoing",
            "at": _iso(o.created_at, zone),
            "kind": o.kind,
            "state": o.state,
            "to": list(o.recipients),
            "subject": o.headers.get("Subject", ""),
            "text": o.body,
        }
        items.append((o.created_at, 1, entry))
    for e in session.scalars(select(Event).where(Event.ticket_id == ticket.id)):
        entry = {
            "type": "event",
            "at": _iso(e.at, zone),
            "action": e.action,
            "actor": e.actor,
            "channel": e.channel,
            "field": e.field,
            "old": e.old,
            "new": e.new,
        }
        items.append((e.at, 2, entry))
    return {
        "number": ticket.number,
        "tag": f"{prefix} #{ticket.number}",
        "subject": ticket.subject,
        "status": ticket.status,
        "priority": ticket.priority,
        "category": ticket.category,
        "team": ticket.team,
        "assignee": _who(ticket.assignee) if ticket.assignee else None,
        "requester": _who(ticket.requester),
        "opened": _iso(ticket.created_at, zone),
        "first_response_due": _iso(ticket.first_response_due, zone),
        "deadlines": [
            {
                "target": target,
                "due": _iso(due, zone),
                "met_at": _iso(met, zone),
                "state": deadline_state(ticket, due, met, now),
            }
            for target, due, met in (
                ("first response", ticket.first_response_due, ticket.first_response_at),
                ("resolution", ticket.resolution_due, ticket.resolved_at),
            )
        ],
        # The SLA clock stands still while pending: since when, and until when (#pending until;
        # None: until the requester replies).
        "pending_since": _iso(ticket.pending_since, zone) if ticket.status == Status.PENDING else None,
        "pending_until": _iso(ticket.pending_until, zone) if ticket.status == Status.PENDING else None,
        "timezone": zone.key,
        "rating": ticket.rating,  # the requester's 1 to 5 (ingest/rate.py), None: not rated
        "rated_at": _iso(ticket.rated_at, zone),
        "links": links,
        "thread": [entry for _, _, entry in sorted(items, key=lambda i: (i[0], i[1]))],
    }


def ticket_thread(detail: dict[str, Any]) -> list[str]:
    """The ticket as a person reads it: its head, then the thread with its changes."""
    zone = ZoneInfo(detail["timezone"])

    def when(iso: str | None) -> str:
        return _when(datetime.fromisoformat(iso), zone) if iso else "-"

    out = [
        f"{detail['tag']}: {detail['subject']}",
        f"  status {detail['status']}, priority {detail['priority']}, category {detail['category'] or '-'}, "
        f"assignee {detail['assignee'] or '-'}",
        f"  requester {detail['requester']}; opened {when(detail['opened'])} ({zone.key}), "
        f"first answer due {when(detail['first_response_due'])}"
        + (f" ({zone.key})" if detail["first_response_due"] else ""),
        *(
            f"  linked ({link['kind']}) to {detail['tag'].split('#')[0]}#{link['number'] or '?'}"
            for link in detail["links"]
        ),
        *(_deadline_line(d, when) for d in detail["deadlines"]),
        *(
            [
                f"  clock paused: pending since {when(detail['pending_since'])}, until "
                + (when(detail["pending_until"]) if detail["pending_until"] else "the requester replies")
            ]
            if detail["pending_since"]
            else []
        ),
        *([f"  rated {detail['rating']}/5 by the requester {when(detail['rated_at'])}"] if detail["rating"] else []),
        f"  times in {zone.key}",
    ]
    for item in detail["thread"]:
        if item["type"] == "message":
            out.append(f"--- {when(item['at'])}  {item['from']}  ({item['kind']}, {item['source']})")
            out.extend((item["text"] or "(no text)").splitlines())
            for a in item["attachments"]:
                kept = "" if a["stored"] else f" — NOT KEPT: {a['note']}"
                out.append(
                    f"  [attachment {a['id']}] {a['filename']} ({a['content_type']}, {human_size(a['size'])}){kept}"
                )
            if item["automatic"]:
                out.append(f"  [auto-generated: {'; '.join(item['automatic'])}]")
            out.extend(f"  [{reason}]" for reason in item["not_answered"])
        elif item["type"] == "outgoing":
            out.append(f"--- {when(item['at'])}  to {', '.join(item['to'])}  ({item['kind']}, outbox: {item['state']})")
            out.append(f"Subject: {item['subject']}")
            out.extend(item["text"].splitlines())
        else:
            change = _change(item, detail["tag"].split("#")[0])
            out.append(
                f"  * {when(item['at'])} {item['action']} by {item['actor']} via {item['channel']} {change}".rstrip()
            )
    return out


def _deadline_line(deadline: dict[str, Any], when: Any) -> str:
    """ "  resolution: due 2026-12-03 13:00, met 2026-12-01 10:12" and the like."""
    state, met = deadline["state"], deadline["met_at"]
    if state == "no target":
        return f"  {deadline['target']}: no target"
    said = f"{state} {when(met)}" if met and state == "met" else f"breached, met {when(met)}" if met else state
    return f"  {deadline['target']}: due {when(deadline['due'])}, {said}"


def _change(event: dict[str, Any], prefix: str) -> str:
    """What an event changed, in words: "to HD #1 (quoted-tag)", "status: new -> open"."""
    field, old, new = event["field"], event["old"], event["new"]
    if event["action"] == "linked":
        return f"to {prefix}#{new} ({field})"
    if not field:
        return new or ""
    return f"{field}: {new}" if old is None else f"{field}: {old} -> {new}"


def _who_of(name: str, address: str) -> str:
    return f"{name} <{address}>" if name else address


def _attachment_row(a: Attachment) -> dict[str, Any]:
    return {
        "id": a.id,
        "filename": a.filename,
        "content_type": a.content_type,
        "size": a.size,
        "stored": a.stored,
        "note": a.note,
        "sha256": a.sha256,
    }


def ticket_attachments(session: Session, number: int) -> list[tuple[Attachment, Message]] | None:
    """The attachments of every mail on ticket `number`, oldest first; None: no such ticket."""
    ticket_id = session.scalar(select(Ticket.id).where(Ticket.number == number))
    if ticket_id is None:
        return None
    query = (
        select(Attachment, Message)
        .join(Message, Message.id == Attachment.message_id)
        .where(Message.ticket_id == ticket_id)
        .order_by(Attachment.id)
    )
    return [(a, m) for a, m in session.execute(query)]


def attachment_rows(found: list[tuple[Attachment, Message]], zone: ZoneInfo = UTC) -> list[dict[str, Any]]:
    return [
        {**_attachment_row(a), "message": m.id, "from": m.from_addr, "received": _iso(m.received_at, zone)}
        for a, m in found
    ]


def attachment_list(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'id':<6} {'size':>9}  {'type':<28} {'message':<8} {'from':<30} file"]
    for r in rows:
        kept = "" if r["stored"] else f"  (not kept: {r['note']})"
        lines.append(
            f"{r['id']:<6} {human_size(r['size']):>9}  {r['content_type']:<28} {r['message']:<8} {r['from']:<30} "
            f"{r['filename']}{kept}"
        )
    return lines


def outbox_list(session: Session, state: str | None = None) -> list[str]:
    query = select(Outbox).order_by(Outbox.id)
    if state:
        query = query.where(Outbox.state == state)
    return [
        f"{o.id:<6} {o.state:<7} {o.kind:<15} {', '.join(o.recipients):<30} {o.headers.get('Subject', '')}"
        + (f"  [{o.last_error}]" if o.last_error else "")
        for o in session.scalars(query)
    ]


def outbox_counts(session: Session) -> dict[str, int]:
    return {state: n for state, n in session.execute(select(Outbox.state, func.count()).group_by(Outbox.state))}


def quarantine_list(session: Session, zone: ZoneInfo = UTC) -> list[str]:
    rows = [
        f"{q.id:<6} {_when(q.received_at, zone):<17} {q.source:<10} {len(q.raw):>9} bytes  "
        + (f"released as {q.released_as}" if q.released_at else q.reason)
        for q in session.scalars(select(Quarantine).order_by(Quarantine.id))
    ]
    return [f"{'id':<6} {f'received ({zone.key})':<17} {'source':<10} {'size':>15}  reason", *rows] if rows else []


def message_rows(
    session: Session, prefix: str, *, without_ticket: bool, kind: str | None, zone: ZoneInfo = UTC
) -> list[dict[str, Any]]:
    query = select(Message, Ticket.number).outerjoin(Ticket, Ticket.id == Message.ticket_id).order_by(Message.id)
    if without_ticket:
        query = query.where(Message.ticket_id.is_(None))
    if kind:
        query = query.where(Message.kind == kind)
    return [
        {
            "id": m.id,
            "received": _iso(m.received_at, zone),
            "kind": m.kind,
            "ticket": number,
            "tag": f"{prefix} #{number}" if number else None,
            "from": m.from_addr,
            "subject": m.subject,
            "message_id": m.message_id,
        }
        for m, number in session.execute(query)
    ]


def message_list(rows: list[dict[str, Any]], zone: ZoneInfo = UTC) -> list[str]:
    lines = [f"{'id':<7} {f'received ({zone.key})':<16} {'kind':<10} {'ticket':<10} {'from':<30} subject"]
    for r in rows:
        received = _when(datetime.fromisoformat(r["received"]), zone)
        lines.append(
            f"{r['id']:<7} {received:<16} {r['kind']:<10} {r['tag'] or '-':<10} {r['from']:<30} {r['subject']}"
        )
    return lines


def find_message(session: Session, ref: str) -> Message | None:
    """A stored mail by its number in `messages list`, or by its Message-ID (with or without <>),
    as the log prints it."""
    if ref.isdigit():
        found = session.get(Message, int(ref))
        if found is not None:
            return found
    msgid = ref.strip().removeprefix("<").removesuffix(">")
    return session.scalar(select(Message).where(Message.message_id == msgid).order_by(Message.id).limit(1))


def message_detail(session: Session, m: Message, zone: ZoneInfo = UTC) -> dict[str, Any]:
    """One stored mail with the decisions mailgate took on it (why no ticket, why no answer …)."""
    number = session.scalar(select(Ticket.number).where(Ticket.id == m.ticket_id)) if m.ticket_id else None
    return {
        "id": m.id,
        "kind": m.kind,
        "ticket": number,
        "received": _iso(m.received_at, zone),
        "source": m.source,
        "from": _who_of(m.from_name, m.from_addr),
        "subject": m.subject,
        "message_id": m.message_id,
        "decisions": [dict(step) for step in m.trace],
        "attachments": [_attachment_row(a) for a in m.attachments],
        "text": m.text_full,
    }


def message_lines(detail: dict[str, Any], zone: ZoneInfo = UTC) -> list[str]:
    received = _when_labelled(datetime.fromisoformat(detail["received"]), zone)
    return [
        f"message {detail['id']}: {detail['kind']}, ticket {detail['ticket'] or '-'}, received {received} "
        f"by {detail['source']}",
        f"  From: {detail['from']}",
        f"  Subject: {detail['subject']}",
        f"  Message-ID: <{detail['message_id']}>" if detail["message_id"] else "  Message-ID: (none)",
        "  decisions:",
        *(f"    {step['step']}: {step['decision']}" for step in detail["decisions"]),
        *(
            f"  [attachment {a['id']}] {a['filename']} ({a['content_type']}, {human_size(a['size'])})"
            for a in detail["attachments"]
        ),
        "",
        *(detail["text"] or "(no text)").splitlines(),
    ]


# What `quarantine show` prints of a mail that could not be parsed: enough to recognise it, never
# all of it (it may be megabytes, or binary).
_QUARANTINE_HEADER_LINES = 60
_QUARANTINE_TEXT_LINES = 20


def quarantine_detail(q: Quarantine, zone: ZoneInfo = UTC) -> list[str]:
    head, _, body = q.raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    header_lines = head.decode("utf-8", "replace").splitlines()
    text_lines = body.decode("utf-8", "replace").splitlines()
    lines = [
        f"quarantined mail {q.id}: {len(q.raw)} bytes, received {_when_labelled(q.received_at, zone)} by {q.source}",
        f"  reason: {q.reason}",
        f"  envelope: from <{q.envelope_sender or ''}> to {', '.join(q.envelope_recipients or []) or '-'}",
    ]
    if q.released_at:
        lines.append(f"  released {_when_labelled(q.released_at, zone)} as {q.released_as}")
    lines += ["", *(line[:300] for line in header_lines[:_QUARANTINE_HEADER_LINES])]
    if len(header_lines) > _QUARANTINE_HEADER_LINES:
        lines.append(f"[… {len(header_lines) - _QUARANTINE_HEADER_LINES} more header lines]")
    lines += ["", *(line[:300] for line in text_lines[:_QUARANTINE_TEXT_LINES])]
    if len(text_lines) > _QUARANTINE_TEXT_LINES:
        lines.append(f"[… {len(text_lines) - _QUARANTINE_TEXT_LINES} more lines: `--raw | less` or --output FILE]")
    return lines
