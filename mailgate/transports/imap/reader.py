"""One poll round over a mailbox's folder: which mail is new, ingest() each, then tell the server a
batch at a time (acknowledge.py), and keep the position in the `mailbox_state` table.

1. SELECT the folder. A UIDVALIDITY other than the stored one (the server renumbered the folder)
   resets the stored position to 0: everything is looked at again, and ingest()'s dedupe turns
   mail stored before into "duplicate", which is then moved/flagged like any other.
2. Candidates: with `after = "move"` every message still in the folder (what we processed is
   gone); with `after = "flag"` the UNSEEN ones plus every UID above the stored position, so mail
   a person opened in a client before we fetched it is not skipped. Mail flagged \\Deleted is
   never a candidate.
3. Batches of up to BATCH_MESSAGES mails: fetch them (BODY.PEEK[]: reading flags nothing),
   ingest() each in order, and once every mail of the batch is committed, move the batch to
   `move_to` (or flag it \\Seen) with one command. A crash or a dropped connection in between
   offers the batch again, and dedupe makes it duplicates: never a second ticket, never a lost
   mail. A TemporaryFailure leaves the mail in place for a retry after `poll_seconds`; after
   `max_failures` failures it is moved to `failure_folder` with its batch (never deleted).
   Failures are counted in memory: a restart gives a failing mail `max_failures` new attempts.
   While the database itself is unreachable, failures are not counted against the mail: the
   round ends (DatabaseUnavailable) once what was stored is acknowledged.
4. Store UIDVALIDITY and the position (the highest UID below which everything is done) after
   each batch.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from mailgate.app import App
from mailgate.config import ImapMailbox
from mailgate.db import describe
from mailgate.ingest.pipeline import IngestResult, TemporaryFailure, ingest
from mailgate.models import MailboxState
from mailgate.transports.imap import acknowledge
from mailgate.transports.imap.connect import folder_name
from mailgate.transports.imap.lease import Lease, LeaseLost

log = logging.getLogger("mailgate.imap")

BATCH_MESSAGES = 100
BATCH_BYTES = 64 * 1024 * 1024  # a batch of big mails is cut short to bound memory
SIZE_QUERY_UIDS = 1000  # UIDs per FETCH RFC822.SIZE: keeps command lines short


class DatabaseUnavailable(Exception):
    """The database cannot be reached: not the mail's fault; the round ends and retries later."""


@dataclass
class PollReport:
    """What one round did."""

    mailbox: str
    candidates: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # ingest() outcomes: new_ticket, duplicate …
    failed: int = 0  # temporary failures; the mail stays for the next round
    to_failure_folder: int = 0
    uidvalidity_reset: bool = False
    standby: bool = False  # another daemon holds this mailbox's lease; nothing was done
    stopped: bool = False  # stop was set before every candidate was handled

    @property
    def handled(self) -> int:
        return sum(self.outcomes.values())


@dataclass
class _GivenUp:
    uid: int
    message_id: str
    attempts: int
    error: str


@dataclass
class _Batch:
    """What became of a batch's mails; the server is told once all of them are settled."""

    looked_at: list[int] = field(default_factory=list)  # in order
    stored: list[tuple[int, IngestResult]] = field(default_factory=list)
    given_up: list[_GivenUp] = field(default_factory=list)  # for the failure folder
    left: set[int] = field(default_factory=set)  # failed; tried again in a later round


@dataclass
class _Position:
    """The highest UID below which everything is done. It never passes a mail still to be tried:
    not the first one that failed in this round, nor `cap`, the first one waiting for a later round."""

    uid: int
    cap: int | None
    blocked: bool = False

    def settle(self, uid: int, done: bool) -> None:
        if not done:
            self.blocked = self.blocked or uid > self.uid
        elif not self.blocked and (self.cap is None or uid < self.cap):
            self.uid = max(self.uid, uid)


class MailboxReader:
    """Reads one mailbox's folder, round after round (failure counts carry over between rounds)."""

    def __init__(self, app: App, mailbox: ImapMailbox) -> None:
        self.app = app
        self.mailbox = mailbox
        self.source = f"imap:{mailbox.name}"
        self.totals: Counter[str] = Counter()  # ingest() outcomes since start
        # (uidvalidity, uid) -> failed attempts, and when (time.monotonic()) it may be tried again
        self._failures: dict[tuple[int, int], tuple[int, float]] = {}
        self._flagged: set[tuple[int, int]] = set()  # flagged by us, above the stored position

    def poll(
        self, client: IMAPClient, delimiter: str | None, stop: threading.Event, lease: Lease, retry_now: bool
    ) -> PollReport:
        """Handle the candidates. A mail that failed is tried again after `poll_seconds` (or at
        once with `retry_now`), not in every round a burst of new mail brings. Raises LeaseLost
        between batches when the lease is no longer held."""
        box = self.mailbox
        report = PollReport(box.name)
        selected = client.select_folder(folder_name(box.folder, delimiter))
        uidvalidity = int(selected[b"UIDVALIDITY"])
        stored_position = self._load_position(uidvalidity, report)
        uids = self._candidates(client, uidvalidity, stored_position)
        present = set(uids)  # forget failures of mail that is gone (moved away by a person)
        self._failures = {k: v for k, v in self._failures.items() if k[0] == uidvalidity and k[1] in present}
        later: set[int] = set()
        if not retry_now:
            now = time.monotonic()
            later = {uid for uid in uids if self._failures.get((uidvalidity, uid), (0, 0.0))[1] > now}
            uids = [uid for uid in uids if uid not in later]
        report.candidates = len(uids)
        position = _Position(stored_position, cap=min((uid for uid in later if uid > stored_position), default=None))
        for uids_of_batch in _batches(client, uids):
            batch = self._ingest_batch(client, uidvalidity, uids_of_batch, delimiter, stop, report)
            for uid in batch.looked_at:
                position.settle(uid, done=uid not in batch.left)
            self._save_position(uidvalidity, position.uid)
            self._flagged = {k for k in self._flagged if k[0] == uidvalidity and k[1] > position.uid}
            if report.stopped:
                break
            if not lease.held():
                raise LeaseLost
        return report

    def _candidates(self, client: IMAPClient, uidvalidity: int, position: int) -> list[int]:
        if self.mailbox.after == "move":
            return sorted(client.search(["NOT", "DELETED"]))
        unseen = set(client.search(["UNSEEN", "NOT", "DELETED"]))
        # "n:*" always matches the highest UID, even below n: hence the filter.
        newer = {uid for uid in client.search(["UID", f"{position + 1}:*", "NOT", "DELETED"]) if uid > position}
        return sorted(uid for uid in unseen | newer if (uidvalidity, uid) not in self._flagged)

    # One batch ---------------------------------------------------------------------------------

    def _ingest_batch(
        self,
        client: IMAPClient,
        uidvalidity: int,
        uids: list[int],
        delimiter: str | None,
        stop: threading.Event,
        report: PollReport,
    ) -> _Batch:
        fetched = client.fetch(uids, ["BODY.PEEK[]"])
        batch = _Batch()
        try:
            for uid in uids:
                if stop.is_set():
                    report.stopped = True
                    break
                raw = fetched.get(uid, {}).get(b"BODY[]")
                if raw is None:  # expunged by someone else in the meantime
                    continue
                batch.looked_at.append(uid)
                self._ingest(uidvalidity, uid, raw, batch, report)
        except BaseException:
            # The database went away (or a bug): what was stored is acknowledged all the same,
            # unless the connection failed too (then it comes again as duplicates).
            with contextlib.suppress(IMAPClientError, OSError):
                self._acknowledge(client, uidvalidity, batch, delimiter, report)
            raise
        self._acknowledge(client, uidvalidity, batch, delimiter, report)
        return batch

    def _ingest(self, uidvalidity: int, uid: int, raw: bytes, batch: _Batch, report: PollReport) -> None:
        box = self.mailbox
        key = (uidvalidity, uid)
        try:
            result = ingest(self.app, raw, self.source)
        except TemporaryFailure as exc:
            self._check_database()  # raises when the database is down: not this mail's fault
            attempts = self._failures.get(key, (0, 0.0))[0] + 1
            self._failures[key] = (attempts, time.monotonic() + box.poll_seconds)
            report.failed += 1
            if attempts >= box.max_failures:
                batch.given_up.append(_GivenUp(uid, _message_id(raw), attempts, str(exc)))
                return
            batch.left.add(uid)
            log.warning(
                "imap mailbox=%s uid=%d msgid=%s: ingest failed (%d of %d), left for the next round: %s",
                box.name,
                uid,
                _message_id(raw),
                attempts,
                box.max_failures,
                exc,
            )
            return
        self._failures.pop(key, None)
        batch.stored.append((uid, result))
        report.outcomes[result.outcome] += 1
        self.totals[result.outcome] += 1

    def _acknowledge(
        self, client: IMAPClient, uidvalidity: int, batch: _Batch, delimiter: str | None, report: PollReport
    ) -> None:
        """Move or flag the stored mails, and move those given up on: one command each."""
        box = self.mailbox
        stored = [uid for uid, _ in batch.stored]
        if box.after == "move":
            acknowledge.move(client, stored, folder_name(box.move_to, delimiter))
            done = f"moved to {box.move_to}"
        else:
            acknowledge.flag_seen(client, stored)
            self._flagged.update((uidvalidity, uid) for uid in stored)
            done = "flagged \\Seen"
        for uid, result in batch.stored:
            log.info(
                "imap mailbox=%s uid=%d msgid=%s outcome=%s ticket=%s: %s",
                box.name,
                uid,
                f"<{result.message_id}>" if result.message_id else "-",
                result.outcome,
                result.ticket_number,
                done,
            )
        batch.stored = []  # told: a second call (after an error) must not tell again
        acknowledge.move(client, [g.uid for g in batch.given_up], folder_name(box.failure_folder, delimiter))
        for given_up in batch.given_up:
            del self._failures[(uidvalidity, given_up.uid)]
            report.to_failure_folder += 1
            log.error(
                "imap mailbox=%s uid=%d msgid=%s: ingest failed %d times, moved to %s: %s",
                box.name,
                given_up.uid,
                given_up.message_id,
                given_up.attempts,
                box.failure_folder,
                given_up.error,
            )
        batch.given_up = []

    # Stored position -----------------------------------------------------------------------------

    def _load_position(self, uidvalidity: int, report: PollReport) -> int:
        name = self.mailbox.name
        try:
            with self.app.sessions() as session, session.begin():
                row = session.scalar(select(MailboxState).where(MailboxState.name == name))
                if row is None:
                    session.add(MailboxState(name=name, uidvalidity=uidvalidity, last_uid=0, updated_at=self._now()))
                    return 0
                if row.uidvalidity != uidvalidity:
                    if row.uidvalidity is not None:
                        report.uidvalidity_reset = True
                        log.warning(
                            "imap mailbox=%s: UIDVALIDITY changed %s -> %s: looking at every mail again "
                            "(mail stored before counts as duplicate)",
                            name,
                            row.uidvalidity,
                            uidvalidity,
                        )
                    row.uidvalidity, row.last_uid, row.updated_at = uidvalidity, 0, self._now()
                return row.last_uid
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    def _save_position(self, uidvalidity: int, position: int) -> None:
        try:
            with self.app.sessions() as session, session.begin():
                row = session.scalar(select(MailboxState).where(MailboxState.name == self.mailbox.name))
                if row is None:
                    row = MailboxState(name=self.mailbox.name)
                    session.add(row)
                row.uidvalidity, row.last_uid, row.updated_at = uidvalidity, position, self._now()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    def _check_database(self) -> None:
        try:
            with self.app.sessions() as session:
                session.execute(select(MailboxState.id).limit(1))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    def _now(self) -> datetime:
        return self.app.clock.now()


def _batches(client: IMAPClient, uids: Sequence[int]) -> Iterator[list[int]]:
    """Up to BATCH_MESSAGES UIDs per batch, fewer when their sizes add up to BATCH_BYTES."""
    sizes: dict[int, int] = {}
    for start in range(0, len(uids), SIZE_QUERY_UIDS):
        chunk = list(uids[start : start + SIZE_QUERY_UIDS])
        for uid, data in client.fetch(chunk, ["RFC822.SIZE"]).items():
            sizes[uid] = int(data.get(b"RFC822.SIZE", 0))
    batch: list[int] = []
    total = 0
    for uid in uids:
        if uid not in sizes:  # gone since the search
            continue
        if batch and (len(batch) >= BATCH_MESSAGES or total + sizes[uid] > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += sizes[uid]
    if batch:
        yield batch


def _message_id(raw: bytes) -> str:
    """The Message-ID for a log line about a mail ingest() could not store."""
    try:
        value = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw).get("Message-ID")
    except Exception:
        return "-"
    return str(value).strip() if value else "-"
