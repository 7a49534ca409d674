"""Who may do what on a ticket by mail. Dispatchers and admins everything; agents on the tickets
of their teams and those assigned to them. Pure: the settings, the person, the ticket."""

from __future__ import annotations

from mailgate.config import Settings
from mailgate.models import Person, Ticket


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
