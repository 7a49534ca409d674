"""ingest(): raw mail in, ticket state out, in one transaction. Every transport calls only this.

The mail is parsed first (what cannot be parsed goes to quarantine), then the STEPS run in order
on one Incoming, in one transaction. Each step records its decision on the trace and returns
None to go on or an Outcome to end the pipeline; the last step always ends it. A step before
apply only reads, apart from people (see identify) and a replaced reply token (see exposure,
right after authenticate, so that the mail's own proof is taken before and the mail the desk
sends because of it carries the new token): apply takes the ticket number last.
Anything failing rolls the whole transaction back and is reported as temporary, so the
transport keeps the mail and retries: a mail is never lost.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from mailgate.app import App
from mailgate.db import describe
from mailgate.ingest.admission import admission
from mailgate.ingest.alerts import alerts
from mailgate.ingest.apply import apply
from mailgate.ingest.authenticate import authenticate
from mailgate.ingest.breaker import breaker
from mailgate.ingest.classify import classify
from mailgate.ingest.commands import commands
from mailgate.ingest.dedupe import dedupe
from mailgate.ingest.execute import execute
from mailgate.ingest.exposure import exposure
from mailgate.ingest.forwarded import forwarded
from mailgate.ingest.history import History, date_imported, end_imported
from mailgate.ingest.identify import identify
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.notify import notify
from mailgate.ingest.outcome import Outcome, TemporaryFailure
from mailgate.ingest.parse import ParsedMail, Unparseable, parse
from mailgate.ingest.rate import rate
from mailgate.ingest.relay import relay
from mailgate.ingest.route import route
from mailgate.ingest.screen import screen
from mailgate.ingest.thread import thread
from mailgate.models import Attachment
from mailgate.quarantine import put as put_in_quarantine

__all__ = ["STEPS", "IngestResult", "Outcome", "TemporaryFailure", "ingest"]

Step = Callable[[Incoming], Outcome | None]

# The whole flow of a mail, in order. The dispatcher desk's commands go between
# authenticate and apply; rate reads a requester's rating of a closed ticket after them.
# breaker holds a source that opens too many tickets before apply opens one and notify
# queues its mail. alerts stores an alert's repeat
# or recovery on the alert's open ticket and ends there (no ticket number is taken); route
# gives a ticket apply opened its alert's and the routing rules' fields before notify.
STEPS: tuple[Step, ...] = (
    date_imported,
    dedupe,
    screen,
    identify,
    classify,
    thread,
    alerts,
    authenticate,
    exposure,
    forwarded,
    admission,
    commands,
    rate,
    breaker,
    apply,
    route,
    execute,
    end_imported,
    relay,
    notify,
)


log = logging.getLogger("mailgate.ingest")
# The steps whose decisions explain where a mail went, for the one log line per mail.
_EVIDENCE = (
    "token",
    "references",
    "tag",
    "authenticate",
    "exposure",
    "classify",
    "alerts",
    "forwarded",
    "admission",
    "breaker",
    "route",
    "commands",
)


@dataclass
class IngestResult:
    outcome: Outcome
    ticket_number: int | None = None
    message_id: str | None = None
    trace: list[dict[str, str]] = field(default_factory=list)
    quarantine_id: int | None = None
    linked_ticket: int | None = None


def ingest(
    app: App,
    raw: bytes,
    source: str,
    envelope_recipients: Sequence[str] = (),
    envelope_sender: str | None = None,
    received_at: datetime | None = None,
    history: History | None = None,
) -> IngestResult:
    """Store `raw` (from `source`, e.g. "smtp", "imap:support", "pipe") and act on it.

    `envelope_sender` is the SMTP MAIL FROM when the transport knows it ("" for the null sender
    of bounces and auto-replies). `received_at` is when the mail reached us, if it waited (in the
    listener's spool, during a database outage): the message is stored as received then, and a
    new ticket's clock, its SLA targets included, starts then, not when the backlog was worked
    off. What ingest() changes and sends is dated now. `history` (from `mailgate import`): the
    mail is old; it is dated by its own headers and causes no outgoing mail (ingest/history.py).
    """
    now = app.clock.now()
    # Never in the future, whatever another process's clock said.
    arrived = min(now, received_at) if received_at is not None else now
    source = source[:100]
    try:
        mail = parse(raw, app.settings.limits.max_message_bytes, envelope_sender, app.settings.parsing)
    except Unparseable as exc:
        return _quarantined(app, raw, source, str(exc), now, envelope_sender, envelope_recipients)
    except Exception as exc:  # a parser bug on hostile input: the mail waits in quarantine, not in a loop
        log.warning("parser failed on a mail from %s", source, exc_info=log.isEnabledFor(logging.DEBUG))
        reason = f"parser failed: {type(exc).__name__}: {exc}"
        return _quarantined(app, raw, source, reason, now, envelope_sender, envelope_recipients)
    mail.envelope_sender = envelope_sender
    rcpts = [r.lower() for r in envelope_recipients]
    try:
        result, queued = _apply_with_retry(app, mail, source, rcpts, now, arrived, history)
    except TemporaryFailure:
        raise
    except DataError as exc:
        # The database refuses a value of this mail (SQLSTATE class 22): retrying cannot help.
        reason = f"the database refused a value: {describe(exc)}"
        return _quarantined(app, raw, source, reason, now, envelope_sender, envelope_recipients)
    except Exception as exc:
        # One line for the operator (database down, disk full …); the traceback only with -v.
        log.error(
            "ingest failed, rolled back, mail left with the sender: source=%s msgid=%s: %s",
            source,
            mail.logged_id,
            describe(exc),
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        raise TemporaryFailure(describe(exc)) from exc
    if queued:
        app.outbox_changed()  # mail waits in the outbox: let the sender know now
    evidence = [t["decision"] for t in result.trace if t["step"] in _EVIDENCE]
    log.info(
        "ingest source=%s msgid=%s outcome=%s ticket=%s evidence=%s",
        source,
        mail.logged_id,
        result.outcome,
        result.ticket_number,
        "; ".join(evidence) or "-",
    )
    return result


def _quarantined(
    app: App,
    raw: bytes,
    source: str,
    reason: str,
    now: datetime,
    envelope_sender: str | None,
    envelope_recipients: Sequence[str],
) -> IngestResult:
    row_id = put_in_quarantine(app, raw, source, reason, now, envelope_sender, envelope_recipients)
    return IngestResult(Outcome.QUARANTINED, trace=[{"step": "parse", "decision": reason}], quarantine_id=row_id)


RACE_ATTEMPTS = 5


def _apply_with_retry(
    app: App,
    mail: ParsedMail,
    source: str,
    rcpts: list[str],
    now: datetime,
    arrived: datetime,
    history: History | None = None,
) -> tuple[IngestResult, int]:
    """Run the transaction; a unique-key race with a concurrent ingest is settled by re-running.
    Returns the result and how many outgoing mails it queued.

    Two daemons may store the same mail (-> duplicate) or create the same new person at once
    (-> the second run finds the person): neither is an error the sender should see.
    """
    for attempt in range(1, RACE_ATTEMPTS + 1):
        new_files: list[str] = []
        try:
            try:
                with app.sessions() as session, session.begin():
                    item = Incoming(
                        app, session, mail, source, now, arrived, rcpts, history=history, new_files=new_files
                    )
                    return _run(item), item.queued
            except BaseException:
                _discard_files(app, new_files)
                raise
        except (IntegrityError, OperationalError) as exc:
            if isinstance(exc, OperationalError) and not _is_conflict(exc):
                raise
            log.info("ingest msgid=%s: concurrent transaction (%s), attempt %d", mail.logged_id, describe(exc), attempt)
            last = exc
            # Two transactions that raced once race again if both retry at once (a busy
            # machine lines them up): a random pause of up to 50 ms per attempt parts them.
            time.sleep(random.uniform(0, 0.05 * attempt))
    raise TemporaryFailure(describe(last)) from last


def _run(item: Incoming) -> IngestResult:
    """The STEPS on `item` until one ends the pipeline; the result is read before commit."""
    for note in item.mail.notes:  # what the parsing bounds cut, before any step stores the trace
        item.note("parse", note)
    for step in STEPS:
        outcome = step(item)
        if outcome is not None:
            break
    else:
        raise AssertionError(f"no step ended the pipeline for msgid={item.mail.logged_id}")
    message = item.message
    if message is not None and len(message.trace) != len(item.trace):
        message.trace = list(item.trace)  # the notes of the steps after the one that stored it
    linked = item.linked.number if item.linked is not None else None
    return IngestResult(
        outcome,
        item.ticket_number,
        item.mail.message_id,
        item.trace,
        quarantine_id=item.quarantine_id,
        linked_ticket=linked,
    )


def _discard_files(app: App, digests: list[str]) -> None:
    """Remove attachment files a rolled-back transaction wrote, unless a stored row uses them
    (the same file may have been committed by a concurrent mail in the meantime)."""
    if not digests:
        return
    try:
        with app.sessions() as session:
            used = set(session.scalars(select(Attachment.sha256).where(Attachment.sha256.in_(digests))))
    except Exception:  # the database is the reason we are here; leave the files for later
        return
    for digest in set(digests) - used:
        app.store.discard(digest)


def _is_conflict(exc: OperationalError) -> bool:
    """A deadlock or serialization failure on PostgreSQL: running the transaction again is the cure."""
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001")
