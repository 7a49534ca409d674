"""Step execute: apply the command lines that step commands accepted to the ticket, and queue
the receipt (each change, old -> new, and the new SLA deadlines where they moved) and, for
#help and the queries, the digest. Every change goes through tickets.py, as an event naming
the command mail and the evidence that proved its sender.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from mailgate import permissions, tickets
from mailgate.commands import undo
from mailgate.commands.parse import USAGE
from mailgate.ingest.commands import CommandMail, Line, queue_reply
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.languages import language_of
from mailgate.models import Person, Status, Ticket
from mailgate.outgoing.compose import local_time
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail
from mailgate.reasons import Reason
from mailgate.sla import policy as sla

_OPEN = (Status.NEW, Status.OPEN, Status.PENDING)


def execute(item: Incoming) -> Outcome | None:
    mail = item.commands
    if mail is None:
        return None
    ticket, message = item.ticket, item.message
    assert ticket is not None and message is not None, "execute runs after apply stored the mail on its ticket"
    mail.ticket = ticket  # the same ticket, or the one a merged ticket's mail went on
    message.internal = item.internal
    item.session.flush()  # the events name the message by its id
    changes: list[dict[str, str]] = []
    before = (ticket.first_response_due, ticket.resolution_due)
    for line in mail.changes:
        changes.extend(_apply(item, mail, line))
    deadlines = None
    # Deadlines follow priority, category and team; a status in or out of pending pauses or
    # resumes the clock.
    if any(c["what"] in ("priority", "category", "team", "status") for c in changes):
        sla.recompute(item.app.settings, ticket, item.now)
        if (ticket.first_response_due, ticket.resolution_due) != before:
            language = language_of(item.app.settings, item.sender.address)
            deadlines = {
                "first_response": local_time(item.app.settings, ticket.first_response_due, language),
                "resolution": local_time(item.app.settings, ticket.resolution_due, language),
            }
    note = " (internal note)" if item.internal else ""
    item.note("execute", f"{len(changes)} change(s) on ticket {ticket.number}{note}")
    if mail.changes:
        context = {"unproven": False, "problems": [], "changes": changes, "deadlines": deadlines}
        context["note_saved"] = item.internal
        queue_reply(item, mail, "command_receipt", context)
    if mail.queries:
        queue_digest(item, mail)
    return None


def _apply(item: Incoming, mail: CommandMail, line: Line) -> list[dict[str, str]]:
    """Make the change of one line; what changed, for the receipt ([]: it was so already)."""
    session, ticket, command = item.session, mail.ticket, line.command
    assert item.message is not None
    how: dict[str, Any] = {
        "actor": item.sender.address,
        "channel": item.source,
        "now": item.now,
        "evidence": mail.evidence,
        "message_id": item.message.id,
    }
    name = command.name
    if name in ("assign", "take", "unassign"):
        person = line.person if name != "unassign" else None
        old = ticket.assignee.address if ticket.assignee else "-"
        if ticket.assignee_id == (person.id if person else None):
            return []
        tickets.assign(session, ticket, person, **how)
        item.assigned = person
        done = [_change("assignee", old, person.address if person else "-")]
        if person is not None and ticket.status == Status.NEW:
            done += _status(item, ticket, Status.OPEN, how)
        return done
    if name in ("priority", "category", "team"):
        old = getattr(ticket, name)
        if not tickets.set_field(session, ticket, name, str(command.value), **how):
            return []
        return [_change(name, old or "-", str(command.value))]
    if name == "status":
        return _status(item, ticket, Status(str(command.value)), how)
    if name == "close":
        item.close_text = command.arg  # "#close Replaced the toner": the requester's close notice says it
        return _status(item, ticket, Status.CLOSED, how)
    if name == "reopen":
        return _status(item, ticket, Status.OPEN, how)
    if name == "pending":
        done = _status(item, ticket, Status.PENDING, how)
        old = ticket.pending_until
        tickets.set_pending_until(session, ticket, line.until, **how)
        if old != line.until:
            done.append(_change("pending until", str(old.date()) if old else "-", str(command.value)))
        return done
    if name == "cc" and line.person is not None:
        if command.action == "add" and tickets.add_cc(session, ticket, line.person, **how):
            return [_change("cc", "-", line.person.address)]
        if command.action == "remove" and tickets.remove_cc(session, ticket, line.person, **how):
            return [_change("cc", line.person.address, "-")]
        return []
    if name == "requester" and line.person is not None:
        old = ticket.requester.address
        if not tickets.set_requester(session, ticket, line.person, **how):
            return []
        return [_change("requester", old, line.person.address)]
    if name == "merge" and line.other is not None:
        tickets.merge(session, ticket, line.other, **how)
        item.status_set = True
        return [_change("merged into", "-", f"#{line.other.number}"), _change("status", "-", Status.CLOSED)]
    if name == "link" and line.other is not None:
        if tickets.link(session, ticket, line.other, "related", **how):
            return [_change("linked to", "-", f"#{line.other.number}")]
        return []
    if name == "undo" and line.undo_message_id is not None:
        reverted = undo.revert(
            session,
            item.app.settings,
            ticket,
            line.undo_message_id,
            actor=item.sender.address,
            channel=item.source,
            now=item.now,
            evidence=mail.evidence,
            undo_message_id=item.message.id,
        )
        if any(r["what"] == "status" for r in reverted):
            item.status_set = True
        return [_change(r["what"], r["old"], r["new"]) for r in reverted]
    return []  # #note: the stored message is the note


def _status(item: Incoming, ticket: Ticket, status: Status, how: dict[str, Any]) -> list[dict[str, str]]:
    item.status_set = True
    old = ticket.status
    if old == status:
        return []
    tickets.set_status(item.session, ticket, status, **how)
    return [_change("status", old, status)]


def _change(what: str, old: str, new: str) -> dict[str, str]:
    return {"what": what, "old": str(old), "new": str(new)}


# -- the digest: #help and the queries --------------------------------------------------------


def queue_digest(item: Incoming, mail: CommandMail) -> None:
    settings, sender, session = item.app.settings, item.sender, item.session
    limit = settings.commands.digest_tickets
    language = language_of(settings, sender.address)
    sections: list[dict[str, Any]] = []
    for line in mail.queries:
        name = line.command.name
        if name == "help":
            allowed = permissions.allowed_commands(settings, sender, mail.ticket)
            sections.append({"kind": "help", "usage": [USAGE[n] for n in allowed], "role": sender.role})
        elif name == "show" and line.other is not None:
            sections.append({"kind": "show", "ticket": line.other, **_details(item, line.other, language)})
        elif name in ("mine", "queue"):
            query = select(Ticket).where(Ticket.status.in_(_OPEN)).order_by(Ticket.number)
            if name == "mine":
                query, title = query.where(Ticket.assignee_id == sender.id), Reason("yours", "assigned to you")
            elif line.command.value:
                team = str(line.command.value)
                query, title = query.where(Ticket.team == team), Reason("team", f"team {team}", team=team)
            elif sender.role in ("dispatcher", "admin"):
                query, title = query.where(Ticket.assignee_id.is_(None)), Reason("unassigned", "unassigned")
            else:
                member = settings.staff_member(sender.address)
                teams = member.all_teams if member is not None else []
                names = ", ".join(teams)
                query, title = (
                    query.where(Ticket.team.in_(teams)),
                    Reason("your_teams", f"your teams {names}", teams=names),
                )
            found = list(session.scalars(query.limit(limit + 1)))
            rows = [_row(item, t, language) for t in found[:limit]]
            sections.append({"kind": "list", "title": title, "rows": rows, "more": len(found) > limit})
    assert item.message is not None
    outgoing = OutgoingMail(
        "command_digest",
        f"command_digest:{item.message.id}:{sender.id}",
        mail.ticket,
        sender,
        "command_digest",
        {"sections": sections, "limit": limit, "prefix": settings.tickets.tag_prefix},
        auto_submitted=AutoSubmitted.REPLIED,
        in_reply_to=item.mail.message_id,
        language=language,
    )
    item.send("execute", outgoing)


def _row(item: Incoming, ticket: Ticket, language: str) -> dict[str, str]:
    assignee: Person | None = ticket.assignee
    return {
        "number": str(ticket.number),
        "status": ticket.status,
        "priority": ticket.priority,
        "subject": ticket.subject[:80],
        "assignee": assignee.address if assignee else "-",
        "due": local_time(item.app.settings, ticket.first_response_due, language) or "-",
    }


def _details(item: Incoming, ticket: Ticket, language: str) -> dict[str, Any]:
    requester = ticket.requester
    return {
        "row": _row(item, ticket, language),
        "requester": requester.address,
        "category": ticket.category or "-",
        "team": ticket.team or "-",
        "resolution_due": local_time(item.app.settings, ticket.resolution_due, language) or "-",
        "messages": len(ticket.messages),
    }
