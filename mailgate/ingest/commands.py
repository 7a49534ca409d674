"""Step commands: read the command lines at the top of a reply, check who sent them and whether
they may, and refuse the whole mail when anything is wrong. Step execute applies them.

Which mail is a command mail: a reply (the mail names a ticket: a token, a reference, a tag)
whose new text starts with command lines (commands/parse.py), from a staff member, or from the
ticket's requester when a line names a known command. A requester who starts with "#thanks"
wrote text; a new mail naming no ticket is a new ticket, whatever its first line says, except
a staff member's that is nothing but questions (#help, #mine, #queue, #show, no other text):
it is answered by the digest alone and kept on no ticket (no ticket, no acknowledgement, no
dispatcher notice; before breaker, which would store the dispatcher's own address's mail as
automatic). Such questions list tickets, so unproven they get only the explanation below.

A command mail is applied whole or not at all. It is refused, stored (everything is kept, on
the ticket only when its sender was let onto it) and changes nothing when:
- it is not proven to come from its sender (ingest/authenticate.py: a token issued to them, the
  trusted MTA's DMARC/DKIM pass): the sender's directory address is told how to send commands,
  rate-limited like acknowledgements, since anyone can write a staff member's From;
- a line is unknown, names an unknown or ambiguous person, is not allowed to this sender
  (permissions.py), or contradicts another line: the receipt lists each line's problem.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime, time

from sqlalchemy import select

from mailgate import people, permissions, tickets
from mailgate.commands import undo
from mailgate.commands.parse import (
    ANYWHERE_NAMES,
    Command,
    CommandBlock,
    did_you_mean,
    may_hold_commands,
    one_of,
    parse_commands,
    unknown,
)
from mailgate.config import StaffMember
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.quotes import extract_reply
from mailgate.ingest.store import store_message
from mailgate.languages import language_of
from mailgate.models import MessageKind, Participant, Person, Ticket
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail
from mailgate.reasons import Reason
from mailgate.sla.policy import timezone

# Lines that set the same thing: two of them with different values are ambiguous.
_SETS = {
    "assign": "assignee",
    "unassign": "assignee",
    "take": "assignee",
    "status": "status",
    "pending": "status",
    "close": "status",
    "reopen": "status",
    "priority": "priority",
    "category": "category",
    "team": "team",
    "requester": "requester",
    "merge": "merge",
}


@dataclass
class Line:
    """One command line, checked: what it names, or what is wrong with it."""

    command: Command
    # Reasons (mailgate/reasons.py): the receipt words them in its reader's language.
    problem: str = ""
    suggestion: str = ""
    person: Person | None = None  # #assign, #take, #cc, #requester
    other: Ticket | None = None  # #merge, #link, #show
    until: datetime | None = None  # #pending until: the start of that day in the desk's zone
    undo_message_id: int | None = None  # #undo: the command mail it reverts


@dataclass
class CommandMail:
    block: CommandBlock
    # The ticket the mail names (the one the commands act on); None: questions in a new mail.
    ticket: Ticket | None
    lines: list[Line] = field(default_factory=list)
    evidence: str = ""  # what proved the sender (Proof.evidence)

    @property
    def problems(self) -> list[Line]:
        return [line for line in self.lines if line.problem]

    @property
    def changes(self) -> list[Line]:
        return [line for line in self.lines if line.command.name not in ANYWHERE_NAMES]

    @property
    def queries(self) -> list[Line]:
        return [line for line in self.lines if line.command.name in ANYWHERE_NAMES]


def commands(item: Incoming) -> Outcome | None:
    if item.history is not None or item.reasons or item.reaction:
        return None
    named = item.thread.ticket or item.thread.linked
    settings, sender = item.app.settings, item.sender
    # A requester's new mail is a new ticket whatever its first line says (so from here on a
    # non-staff sender's mail names a ticket).
    if named is None and (not sender.is_staff or item.on_behalf is not None):
        return None
    if not may_hold_commands(item.mail.text):
        return None
    today = item.now.astimezone(timezone(settings)).date()
    block = parse_commands(extract_reply(item.mail.text), today)
    if block is None:
        return None
    if named is None and not _only_questions(block):
        item.note("commands", "a new mail naming no ticket, not only questions: read as a new request")
        return None
    if not sender.is_staff and (not any(c.ok for c in block.commands) or not _may_command_as_outsider(item, named)):
        item.note("commands", "command-like first lines from a non-staff sender: read as text")
        return None
    for note in block.notes:
        item.note("commands", note)
    mail = CommandMail(block, named, [Line(c) for c in block.commands])
    item.commands = mail
    item.text_after_commands = _text_after(block)
    item.internal = bool(block.named("note"))
    proof = item.proof
    if proof is None or proof.person_id != sender.id:
        return refuse_unproven(item, mail)
    mail.evidence = proof.evidence
    for line in mail.lines:
        _check(item, mail, line)
    _contradictions(mail)
    if mail.problems:
        return refuse(item, mail)
    on = f"on ticket {named.number}" if named is not None else "in a new mail"
    item.note("commands", f"{len(mail.lines)} command line(s) of {sender.address} {on}: accepted")
    if item.thread.ticket is None:
        # Only questions (#help, #show …) from staff who do not work on this ticket, or in a new
        # mail: answered, the mail kept on no ticket, as apply would not let them onto it (nor
        # open a ticket, acknowledge it and tell the dispatcher, for a question).
        return _answer_only(item, mail)
    return None


def _only_questions(block: CommandBlock) -> bool:
    """A new mail that is nothing but questions (signature aside): answered without a ticket.
    Text below them, a change or a wrong line make it a request like any other."""
    return not block.rest.strip() and all(c.ok and c.name in ANYWHERE_NAMES for c in block.commands)


def _may_command_as_outsider(item: Incoming, named: Ticket) -> bool:
    """Whether a non-staff sender's known command lines are read as commands: the requester's,
    and those of someone the desk mailed on this ticket (an SLA escalation to
    sla.escalation_address, a Cc) answering by the token issued to them, who meant commands and
    is told why they may not, rather than having "#assign bob" relayed as text."""
    proof, sender = item.proof, item.sender
    return named.requester_id == sender.id or (
        proof is not None and proof.how == "token" and proof.person_id == sender.id
    )


def _text_after(block: CommandBlock) -> str:
    close = [c.arg for c in block.named("close") if c.arg]
    return "\n\n".join([*close, block.rest]).strip() if not block.named("note") else block.rest


# -- checking each line ------------------------------------------------------------------------


def _check(item: Incoming, mail: CommandMail, line: Line) -> None:
    command, settings, sender, ticket = line.command, item.app.settings, item.sender, mail.ticket
    if not command.ok:
        line.problem, line.suggestion = command.error, command.suggestion
        return
    window = settings.tickets.reopen_window_days
    if command.name not in ANYWHERE_NAMES and tickets.is_past_reopen_window(ticket, item.now, window):
        # apply turns such a mail into a follow-up ticket: the commands would land on that.
        line.problem = Reason(
            "closed_too_long",
            f"the ticket was closed more than {window} days ago and takes no more changes",
            days=window,
        )
        line.suggestion = Reason("write_new_mail", "write a new mail to open a new ticket")
        return
    refusal = permissions.command_refusal(settings, sender, ticket, command.name)
    if refusal is not None:
        _not_allowed(line, refusal)
        return
    name = command.name
    if name in ("assign", "take"):
        _check_assignee(item, line)
    elif name == "category":
        _known(line, "category", sorted(settings.sla.categories))
    elif name == "team":
        teams = {t for m in settings.staff for t in m.all_teams} | set(settings.sla.teams)
        _known(line, "team", sorted(teams))
    elif name == "cc":
        _check_cc(item, mail, line)
    elif name == "requester":
        address = str(command.value)
        if people.is_own_address(settings, address):
            line.problem = _own_address(address)
        else:
            line.person = people.person_for(item.session, settings, address, "", item.now)
    elif name in ("merge", "link", "show"):
        _check_other(item, mail, line)
    elif name == "pending":
        assert command.value is not None
        start = datetime.combine(command.value, time(0), timezone(settings))  # type: ignore[arg-type]
        line.until = start.astimezone(item.now.tzinfo)
    elif name == "queue":
        member = settings.staff_member(sender.address)
        team = command.value
        if team and sender.role not in ("dispatcher", "admin") and (member is None or team not in member.all_teams):
            refusal = Reason("not_your_queue", f"the queue of team {team} is not yours", team=team)
            _not_allowed(line, refusal, Reason("queue_alone", "#queue alone lists your teams' tickets"))
    elif name == "undo":
        found = undo.last_command_mail(item.session, settings, ticket, sender, item.now)
        if found is None:
            window = settings.commands.undo_window_minutes
            english = f"nothing to undo: no command mail of yours on this ticket in the last {window} minutes"
            line.problem = Reason("nothing_to_undo", english, minutes=window)
        else:
            line.undo_message_id = found


def _not_allowed(line: Line, refusal: Reason, suggestion: Reason | None = None) -> None:
    line.problem = Reason("not_allowed", f"not allowed: {refusal}", refusal=refusal)
    line.suggestion = suggestion or Reason("help_lists_yours", "#help lists what you may do")


def _own_address(address: str) -> Reason:
    return Reason("own_address", f"{address} is the desk's own address", address=address)


_NAME_CHARS = 100  # tickets.category and tickets.team


def _known(line: Line, what: str, known: list[str]) -> None:
    """A category or team the config names (any value when it names none)."""
    value = str(line.command.value)
    if len(value) > _NAME_CHARS:  # any name goes when the config names none; the column holds 100
        english = f"the {what} name is longer than {_NAME_CHARS} characters"
        line.problem = Reason("name_too_long", english, what=what, chars=_NAME_CHARS)
        return
    if known and value not in known:
        close = difflib.get_close_matches(value, known, n=1, cutoff=0.5)
        line.problem = unknown(what, value)
        line.suggestion = did_you_mean(close[0]) if close else one_of(known[:20])


def _check_assignee(item: Incoming, line: Line) -> None:
    settings, sender = item.app.settings, item.sender
    wanted = "me" if line.command.name == "take" else str(line.command.value)
    if wanted == "me":
        target = sender
    else:
        members = find_staff(settings.staff, wanted)
        if not members and "@" in wanted:
            line.problem = permissions.not_staff(wanted)
            line.suggestion = _nearest_staff(settings.staff, wanted.split("@")[0])
            return
        if not members:
            line.problem = unknown("person", line.command.arg)
            line.suggestion = _nearest_staff(settings.staff, wanted)
            return
        if len(members) > 1:
            named = [f"{m.name or m.address} <{m.address}>" for m in members]
            english = f"ambiguous: {line.command.arg!r} is " + " or ".join(named)
            line.problem = Reason("ambiguous_person", english, value=repr(line.command.arg), people=named)
            line.suggestion = Reason("write_address", "write their address")
            return
        member = members[0]
        target = people.person_for(item.session, settings, member.address, member.name, item.now)
    refusal = permissions.assign_refusal(settings, sender, target)
    if refusal is not None:
        _not_allowed(line, refusal)
        return
    line.person = target


def find_staff(staff: list[StaffMember], wanted: str) -> list[StaffMember]:
    """Staff members named by `wanted` (any case): one of their addresses, else their name,
    else the local part of an address, else their first name; the first way that names anyone."""
    wanted = wanted.lower()
    ways = (
        lambda m: wanted in m.addresses,
        lambda m: m.name.lower() == wanted,
        lambda m: any(a.split("@")[0] == wanted for a in m.addresses),
        lambda m: bool(m.name) and m.name.split()[0].lower() == wanted,
    )
    for way in ways:
        if found := [m for m in staff if way(m)]:
            return found
    return []


def _nearest_staff(staff: list[StaffMember], wanted: str) -> Reason:
    names = {a.split("@")[0]: a for m in staff for a in m.addresses}
    names.update({m.name.lower(): m.address for m in staff if m.name})
    close = difflib.get_close_matches(wanted.lower(), list(names), n=1, cutoff=0.5)
    return did_you_mean(names[close[0]]) if close else Reason("write_staff", "write a staff member's name or address")


def _check_cc(item: Incoming, mail: CommandMail, line: Line) -> None:
    settings, address = item.app.settings, str(line.command.value)
    if people.is_own_address(settings, address):
        line.problem = _own_address(address)
        return
    if line.command.action == "add":
        line.person = people.person_for(item.session, settings, address, "", item.now)
        return
    person = item.session.scalar(select(Person).where(Person.address == address))
    is_cc = person is not None and item.session.scalar(
        select(Participant.id).where(
            Participant.ticket_id == mail.ticket.id, Participant.person_id == person.id, Participant.role == "cc"
        )
    )
    if not is_cc:
        line.problem = Reason("not_a_cc", f"{address} is not a cc of this ticket", address=address)
        return
    line.person = person


def _check_other(item: Incoming, mail: CommandMail, line: Line) -> None:
    settings, sender, number = item.app.settings, item.sender, int(line.command.value)  # type: ignore[arg-type]
    other = item.session.scalar(select(Ticket).where(Ticket.number == number))
    if other is None:
        line.problem = Reason("no_such_ticket", f"there is no ticket #{number}", number=number)
        return
    name = line.command.name
    if name != "show" and other.id == mail.ticket.id:
        line.problem = Reason("names_itself", f"#{name} names this ticket itself", name=name)
        return
    works_on = sender.role in ("dispatcher", "admin") or permissions.may_work_on(settings, sender, other)
    if name in ("show", "link") and not works_on:
        refusal = Reason("not_your_other", f"you do not work on ticket #{number}", number=number)
        line.problem = Reason("not_allowed", f"not allowed: {refusal}", refusal=refusal)
        return
    if name == "merge":
        if mail.ticket.merged_into_id is not None:
            line.problem = Reason("merged_already", "this ticket is merged already")
            return
        if other.merged_into_id is not None:
            line.problem = Reason(
                "other_merged", f"ticket #{number} is merged into another ticket itself", number=number
            )
            return
    line.other = other


def _contradictions(mail: CommandMail) -> None:
    """Two lines setting one thing to different values: neither is applied (which did the
    sender mean?). #undo stands alone: what it reverts and what else is set would mix."""
    seen: dict[str, Line] = {}
    for line in mail.lines:
        if line.problem:
            continue
        name = line.command.name
        if name == "undo" and len(mail.changes) > 1:
            line.problem = Reason("undo_with_others", "#undo with other changes")
            line.suggestion = Reason("undo_alone", "send #undo in a mail of its own")
            continue
        what = _SETS.get(name)
        if what is None:
            continue
        first = seen.setdefault(what, line)
        if first is not line and _meaning(first) != _meaning(line):
            english = f"ambiguous: {first.command.line!r} and {line.command.line!r} both set the {what}"
            line.problem = Reason(
                "contradiction", english, first=repr(first.command.line), second=repr(line.command.line), what=what
            )
            line.suggestion = Reason("keep_one", "keep one of them")


def _meaning(line: Line) -> tuple[str, object]:
    name = line.command.name
    if name in ("assign", "take"):
        return ("assignee", line.person.id if line.person else None)
    if name == "close":
        return ("status", "closed")
    if name == "reopen":
        return ("status", "open")
    return (name, line.command.value)


# -- refusing ---------------------------------------------------------------------------------


def _store_refused(item: Incoming, mail: CommandMail, why: str) -> None:
    """Keep the mail (on its ticket when apply would have put it there), and the verdict in the
    ticket's audit trail (questions in a new mail: in the stored message's trace only)."""
    on = item.thread.ticket
    item.message = message = store_message(item, on, MessageKind.REFUSED)
    if on is not None:
        item.ticket, item.ticket_number = on, on.number
    if mail.ticket is None:
        return
    item.session.flush()  # the event names the message by its id
    tickets.record(
        item.session,
        mail.ticket,
        actor=item.sender.address,
        action="commands_refused",
        channel=item.source,
        at=item.now,
        new=why[:2000],
        message_id=message.id,
        evidence=mail.evidence,
    )


def refuse_unproven(item: Incoming, mail: CommandMail) -> Outcome:
    sender, settings = item.sender, item.app.settings
    why = f"not authenticated as {sender.address}: no reply token issued to them, no trusted pass of their domain"
    item.note("commands", f"refused, nothing changed: {why}")
    _store_refused(item, mail, why)
    limits = settings.limits
    if item.mail.sender_header != "from":
        item.note("commands", "no explanation: the address is not the mail's From")
        return Outcome.REFUSED
    if item.answers_exhausted("command_unproven", sender.address):
        limit = f"{limits.acks_per_sender} in {limits.ack_window_minutes} minutes"
        item.note("commands", f"no explanation: rate limit reached ({limit})")
        return Outcome.REFUSED
    # To the person the directory knows (identify made an alias their address), never to a
    # Reply-To: the forger does not read it, the staff member learns someone tried.
    context = {"unproven": True, "problems": [], "changes": [], "replaced": item.token_replaced}
    queue_reply(item, mail, "command_unproven", context)
    return Outcome.REFUSED


def refuse(item: Incoming, mail: CommandMail) -> Outcome:
    problems = mail.problems
    item.note("commands", f"refused, nothing changed: {len(problems)} line(s) wrong")
    _store_refused(item, mail, "; ".join(f"{p.command.line}: {p.problem}" for p in problems))
    queue_reply(item, mail, "command_receipt", {"unproven": False, "problems": mail.lines, "changes": []})
    return Outcome.REFUSED


def _answer_only(item: Incoming, mail: CommandMail) -> Outcome:
    from mailgate.ingest.execute import queue_digest

    item.message = store_message(item, None, MessageKind.REPLY)
    item.session.flush()
    queue_digest(item, mail)
    return Outcome.REPLY


def queue_reply(item: Incoming, mail: CommandMail, kind: str, context: dict[str, object]) -> None:
    """A receipt (or the explanation) to the sender, threaded on the ticket under the command mail
    (questions in a new mail: on no ticket, so it carries no tag and no reply token)."""
    app, sender = item.app, item.sender
    assert item.message is not None
    item.session.flush()
    outgoing = OutgoingMail(
        kind,
        f"{kind}:{item.message.id}:{sender.id}",
        mail.ticket,
        sender,
        "command_receipt",
        {"evidence": mail.evidence, "deadlines": None, "note_saved": False, "may_undo": sender.is_staff, **context},
        auto_submitted=AutoSubmitted.REPLIED,
        in_reply_to=item.mail.message_id,
        language=language_of(app.settings, sender.address),
    )
    item.send("commands", outgoing)
