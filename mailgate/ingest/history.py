"""Mail imported as history (`mailgate import`): it happened long ago, so it is dated by when it
was written, not by when it was imported, and it causes no mail now. Two steps, one at each end
of the pipeline; for any other mail both do nothing.

The Date header is the sender's clock and may be wrong or forged; the topmost Received header
is the receiving server's. When they disagree by more than a day, Received wins.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mailgate import tickets
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.parse import ParsedMail
from mailgate.models import MessageKind, Status

# How far the sender's Date may be from the receiving server's clock before it is not believed.
DATE_TOLERANCE = timedelta(days=1)


@dataclass(frozen=True)
class History:
    """How `mailgate import` wants its mail taken: as history, and new tickets closed or not."""

    close: bool = False


def written_at(mail: ParsedMail, now: datetime) -> tuple[datetime, str]:
    """When the mail was written, as well as its headers tell, and which header told it."""
    received = _received_at(mail)
    date = mail.date
    future = date is not None and date > now + DATE_TOLERANCE
    if future:
        date = None  # a Date in the future says nothing about when it was written
    if date is not None and received is not None and abs(date - received) > DATE_TOLERANCE:
        return min(received, now), f"Received ({received:%Y-%m-%d %H:%M} UTC; its Date {date:%Y-%m-%d} disagrees)"
    if date is not None:
        return min(date, now), f"Date ({date:%Y-%m-%d %H:%M} UTC)"
    if received is not None:
        return min(received, now), f"Received ({received:%Y-%m-%d %H:%M} UTC; no usable Date)"
    if future:
        return now, "the import (its Date is in the future, and no Received can be read)"
    return now, "the import (neither Date nor Received can be read)"


def _received_at(mail: ParsedMail) -> datetime | None:
    """The time the last server stamped on the mail (the topmost Received), UTC."""
    for header in mail.headers("Received"):
        _, semicolon, stamp = header.rpartition(";")
        if not semicolon:
            continue
        try:
            parsed = email.utils.parsedate_to_datetime(stamp.strip())
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
    return None


def date_imported(item: Incoming) -> Outcome | None:
    """Step: history mail is stored, and its ticket opened, at the time it was written."""
    if item.history is None:
        return None
    item.arrived, how = written_at(item.mail, item.now)
    # What the mail changes happened then too: the ticket's last activity, its history, and the
    # reopen window a reply is measured against (a reply a day after its closed request joins it).
    item.now = item.arrived
    item.note("history", f"imported as history, dated by {how}")
    return None


def end_imported(item: Incoming) -> Outcome | None:
    """Step, after apply: history mail queues nothing (no acknowledgement, no notice); its new
    ticket is closed when the import asked for that."""
    if item.history is None:
        return None
    message, ticket = item.message, item.ticket
    assert message is not None and ticket is not None, "end_imported runs after apply stored the mail on a ticket"
    item.note("history", "no acknowledgement and no notice: imported as history")
    if message.kind == MessageKind.NEW_TICKET:
        ticket.imported = True  # what happened long ago escalates to no one now (sla/scans.py)
    if item.history.close:  # a reply reopened it, as replies do: an archive stays closed
        tickets.set_status(item.session, ticket, Status.CLOSED, actor="import", channel=item.source, now=item.arrived)
    return Outcome.NEW_TICKET if message.kind == MessageKind.NEW_TICKET else Outcome.REPLY
