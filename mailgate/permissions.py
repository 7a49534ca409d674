"""Who may do what on a ticket by mail. Dispatchers and admins everything; agents on the tickets
of their teams and those assigned to them. Pure: the settings, the person, the ticket."""

from __future__ import annotations

from mailgate.config import Settings
from mailgate.models import Person, Ticket
from mailgate.reasons import Reason


def may_work_on(settings: Settings, person: Person, ticket: Ticket) -> bool:
    """Whether staff member `person` works on `ticket` (answers it, changes it)."""
    if person.role in ("dispatcher", "admin"):
        return True
    if not person.is_staff:
        return False
    if ticket.assignee_id == person.id:
        return True
    member = settings.staff_member(person.address)
    return member is not None and ticket.team is not None and ticket.team in member.all_teams


# -- reply commands (ingest/commands.py) ----------------------------------------------------------

# What an agent may do on a ticket they work on (their team's, or assigned to them); #assign
# of someone else also by [commands] agents_may_reassign. Category, team, requester, merge and
# link are the dispatcher's.
AGENT_COMMANDS = frozenset(
    {"assign", "unassign", "take", "priority", "status", "pending", "close", "reopen", "note", "cc", "undo"}
)
# What a requester may do on their own ticket, beside a plain reply.
REQUESTER_COMMANDS = frozenset({"close", "reopen"})
# Asked of no ticket in particular: any staff member may (what they see is theirs to see).
ANYWHERE = frozenset({"help", "mine", "queue", "show"})


def command_refusal(settings: Settings, person: Person, ticket: Ticket | None, name: str) -> Reason | None:
    """Why `person` may not give command `name` on `ticket`, or None when they may."""
    if name == "help":
        return None
    if person.role in ("dispatcher", "admin"):
        return None
    if person.is_staff:
        if name in ANYWHERE:
            return None
        if ticket is None or not may_work_on(settings, person, ticket):
            return Reason("not_your_ticket", "you do not work on this ticket (not assigned to you, not of your teams)")
        if name in AGENT_COMMANDS:
            return None
        return Reason("for_dispatchers", f"#{name} is for dispatchers", name=name)
    if ticket is not None and ticket.requester_id == person.id and name in REQUESTER_COMMANDS:
        return None
    if ticket is not None and ticket.requester_id == person.id:
        return Reason("for_staff", f"#{name} is for staff; as the requester you may use #close and #reopen", name=name)
    return Reason("not_a_requester", "commands are for staff and for the requester of the ticket")


def assign_refusal(settings: Settings, person: Person, target: Person) -> Reason | None:
    """Why `person` may not assign a ticket they work on to `target`, or None."""
    if not target.is_staff:
        return not_staff(target.address)
    if person.role in ("dispatcher", "admin") or target.id == person.id:
        return None
    rule = settings.commands.agents_may_reassign
    if rule == "anyone":
        return None
    if rule == "no":
        return Reason("only_take", "agents may assign tickets only to themselves here (#take)")
    mine = settings.staff_member(person.address)
    theirs = settings.staff_member(target.address)
    if mine is not None and theirs is not None and set(mine.all_teams) & set(theirs.all_teams):
        return None
    return Reason("not_in_your_teams", f"{target.address} is not in one of your teams", address=target.address)


def not_staff(address: str) -> Reason:
    return Reason("not_staff", f"{address} is not on the staff list", address=address)


def allowed_commands(settings: Settings, person: Person, ticket: Ticket | None) -> list[str]:
    """The commands `person` may give on `ticket`, in the order #help lists them; ticket None
    (#help in a new mail): what a staff member may do in general, on the tickets they work on."""
    from mailgate.commands.parse import COMMANDS

    if ticket is None and person.is_staff and person.role not in ("dispatcher", "admin"):
        return [name for name in COMMANDS if name in AGENT_COMMANDS | ANYWHERE]
    return [name for name in COMMANDS if command_refusal(settings, person, ticket, name) is None]
