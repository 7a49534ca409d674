"""Quarantine: mail that could not be stored as a message (not a mail at all, a value the database
refuses, or too many failed attempts), kept with its raw bytes and the reason until a person
retries it. The only module that changes quarantine rows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from mailgate.app import App
from mailgate.db import describe
from mailgate.ingest.outcome import Outcome, TemporaryFailure
from mailgate.models import Quarantine

__all__ = ["RETRY_SUFFIX", "NotRetried", "StillQuarantined", "TemporaryFailure", "add", "put", "retry"]

# The source of a mail a person retried: ingest() lets it in where a rule had quarantined it.
RETRY_SUFFIX = "+retry"

log = logging.getLogger("mailgate.quarantine")


class NotRetried(Exception):
    """The mail was not run again: there is no quarantined mail of that id, or it was released."""


class StillQuarantined(Exception):
    """The mail went through ingest() again and still cannot be stored; the message says why."""


def put(
    app: App,
    raw: bytes,
    source: str,
    reason: str,
    now: datetime,
    envelope_sender: str | None = None,
    envelope_recipients: Sequence[str] = (),
) -> int:
    """Keep `raw` in quarantine, with its envelope, in a transaction of its own; returns the
    quarantine id. Raises TemporaryFailure when the database cannot take it: the caller keeps
    the mail."""
    try:
        with app.sessions() as session, session.begin():
            row_id = add(session, raw, source, reason, now, envelope_sender, envelope_recipients)
    except Exception as exc:
        # describe(): one line, without the SQL statement and the mail's bytes it would carry.
        log.error("could not write quarantine: %s", describe(exc))
        raise TemporaryFailure(f"could not quarantine: {describe(exc)}") from exc
    if not source.endswith(RETRY_SUFFIX):  # a failed retry's row is removed again: retry() logs it
        log.warning("quarantined source=%s id=%s reason=%s", source, row_id, reason)
    return row_id


def add(
    session: Session,
    raw: bytes,
    source: str,
    reason: str,
    now: datetime,
    envelope_sender: str | None = None,
    envelope_recipients: Sequence[str] = (),
) -> int:
    """Keep `raw` in quarantine within the caller's transaction; returns the quarantine id."""
    row = Quarantine(
        raw=raw,
        reason=reason,
        source=source[:100],
        envelope_sender=envelope_sender,
        envelope_recipients=list(envelope_recipients),
        received_at=now,
    )
    session.add(row)
    session.flush()
    return row.id


def retry(app: App, qid: int) -> str:
    """Run quarantined mail `qid` through ingest() again (after a fix) and release it.

    Returns what it was released as, e.g. "new_ticket 12" or "duplicate 3". Raises NotRetried,
    StillQuarantined (the row stays as it was), or TemporaryFailure (try again later).
    """
    # ingest() itself puts mail into quarantine, so it is imported here, where it is used.
    from mailgate.ingest.pipeline import ingest

    with app.read_sessions() as session:
        row = session.get(Quarantine, qid)
        if row is None:
            raise NotRetried(f"there is no quarantined mail {qid}")
        if row.released_at is not None:
            raise NotRetried(f"quarantined mail {qid} was already released as {row.released_as}")
        raw, source = row.raw, row.source
        sender, recipients = row.envelope_sender, row.envelope_recipients or []
    result = ingest(app, raw, f"{source[: 100 - len(RETRY_SUFFIX)]}{RETRY_SUFFIX}", recipients, sender)
    if result.outcome == Outcome.QUARANTINED:
        # The same mail for the same reason: one row of it is enough.
        with app.sessions() as session, session.begin():
            session.delete(session.get(Quarantine, result.quarantine_id))
        log.warning("quarantine id=%s retried, still quarantined: %s", qid, result.trace[0]["decision"])
        raise StillQuarantined(result.trace[0]["decision"])
    released_as = f"{result.outcome} {result.ticket_number or ''}".strip()
    with app.sessions() as session, session.begin():
        row = session.get(Quarantine, qid)
        row.released_at = app.clock.now()
        row.released_as = released_as
    log.info("quarantine id=%s released as %s", qid, released_as)
    return released_as
