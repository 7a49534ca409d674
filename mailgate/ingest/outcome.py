"""How ingest() ended for one mail, and the one failure that is not an ending."""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """What became of a mail: the CLI prints it, the logs carry it, the transports count it."""

    NEW_TICKET = "new_ticket"
    REPLY = "reply"
    DUPLICATE = "duplicate"  # stored before: nothing changed
    AUTO = "auto"  # auto-generated: stored, never answered
    BOUNCE = "bounce"  # a delivery status notification: stored, never answered
    HELD = "held"  # from a source over the circuit breaker's limits: stored, nothing sent
    # Stored on no ticket or changing nothing, the sender told why: an unknown sender
    # intake.unknown_senders refuses, or a command mail refused whole.
    REFUSED = "refused"
    QUARANTINED = "quarantined"  # not a mail we can store: kept with its bytes and the reason


class TemporaryFailure(Exception):
    """Nothing was stored; the mail must be offered again later (SMTP 451, IMAP: leave it)."""
