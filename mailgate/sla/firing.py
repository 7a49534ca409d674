"""What a scan does once: the sla_firings row first, then the mail, in the caller's transaction.

The row is unique per (ticket, kind, level, deadline) and inserted inside a savepoint: when
another daemon (or an earlier run) inserted it first, the insert fails there, the savepoint is
rolled back and this run leaves that ticket alone. On PostgreSQL the second insert waits for
the first transaction and fails once it commits; on SQLite the write lock orders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgate.config import Settings
from mailgate.languages import language_of
from mailgate.models import Person, SlaFiring, Ticket
from mailgate.outgoing.compose import Templates, local_time
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail, queue
from mailgate.people import robots


def fire(
    session: Session,
    ticket: Ticket,
    *,
    kind: str,
    level: int,
    deadline: datetime,
    now: datetime,
    recipient: str = "",
    note: str = "",
) -> bool:
    """Record that `kind` at `level` fired for `ticket`'s `deadline`; False when it had fired."""
    try:
        with session.begin_nested():
            session.add(
                SlaFiring(
                    ticket_id=ticket.id,
                    kind=kind,
                    level=level,
                    deadline=deadline,
                    fired_at=now,
                    recipient=recipient,
                    note=note,
                )
            )
    except IntegrityError:
        return False
    return True


@dataclass
class Mailer:
    """Queues the scans' mail: built once per run (templates, the token key)."""

    session: Session
    settings: Settings
    templates: Templates
    secret: bytes
    now: datetime

    @classmethod
    def for_run(cls, session: Session, settings: Settings, now: datetime) -> Mailer:
        return cls(session, settings, Templates(settings.templates_path), settings.secret_bytes(), now)

    def send(
        self, template: str, ticket: Ticket, to: Person, occasion: str, context: dict[str, Any] | None = None
    ) -> bool:
        """Queue mail `template` to `to`, in their language; False if it cannot be sent to them."""
        if not to.is_staff and robots(self.session, ticket, [to]):
            return False  # a monitoring system's or a no-reply mailbox: a robot may answer in turn
        language = language_of(self.settings, to.address)
        when = {
            "first_response_due": local_time(self.settings, ticket.first_response_due, language),
            "resolution_due": local_time(self.settings, ticket.resolution_due, language),
        }
        mail = OutgoingMail(
            template,
            f"{template}:{ticket.number}:{occasion}",
            ticket,
            to,
            template,
            {**when, **(context or {})},
            auto_submitted=AutoSubmitted.GENERATED,
            language=language,
        )
        return queue(self.session, self.settings, self.templates, self.secret, mail, self.now) is not None

    def time(self, moment: datetime | None, to: Person) -> str:
        return local_time(self.settings, moment, language_of(self.settings, to.address))
