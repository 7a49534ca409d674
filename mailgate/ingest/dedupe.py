"""Step dedupe: is this mail a copy of one already stored? One key per mail, however often it
arrives: redelivered, re-polled, or sent to both support and the dispatcher."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.parse import ParsedMail
from mailgate.models import Message, Ticket

log = logging.getLogger("mailgate.ingest")

# Headers added in transit: two copies of one mail differ only in these.
_TRACE_HEADER = re.compile(
    rb"^(received|x-received|return-path|delivered-to|x-original-to|envelope-to|x-envelope-to|"
    rb"authentication-results|arc-[a-z-]+|x-spam-[a-z-]+|x-virus-[a-z-]+|x-ms-exchange-organization-[a-z-]+)"
    rb"\s*:",
    re.I,
)


def content_hash(mail: ParsedMail) -> str:
    """SHA-256 of the mail without its trace headers: equal for two copies of one mail."""
    # CRLF and old-Mac CR-only alike (re.sub would hold a list of every line on the way).
    raw = mail.raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    head, _, body = raw.partition(b"\n\n")
    # The kept lines joined by "\n", then "\n\n" and the body: hashed as they are found, since
    # a list of every line costs many times a header section of millions of them.
    digest = hashlib.sha256()
    skipping, first = False, True
    for line in _lines(head):
        if line[:1] not in (b" ", b"\t"):
            skipping = bool(_TRACE_HEADER.match(line)) or line.startswith(b"From ")
        if not skipping:
            digest.update(line if first else b"\n" + line)
            first = False
    digest.update(b"\n\n")
    digest.update(body)
    return digest.hexdigest()


def _lines(data: bytes) -> Iterator[bytes]:
    """data.split(b"\n"), one line at a time."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            yield data[start:]
            return
        yield data[start:end]
        start = end + 1


def dedupe_key(mail: ParsedMail) -> str:
    """The normalised Message-ID, else a hash of the mail without its trace headers."""
    if mail.message_id:
        return f"mid:{mail.message_id[:900]}"
    return "sha256:" + content_hash(mail)


def fingerprint(mail: ParsedMail) -> str:
    """SHA-256 of what a person reads: subject, text, attachments. Survives re-encoding in transit."""
    digest = hashlib.sha256()
    for piece in (mail.subject, mail.text):
        digest.update(piece.encode("utf-8", "replace") + b"\0")
    for attachment in mail.attachments:
        digest.update(hashlib.sha256(attachment.data).digest())
    return digest.hexdigest()


def earlier_copy(session: Session, mail: ParsedMail, content: str) -> tuple[str, int | None, bool]:
    """(key to store `mail` under, ticket number of the earlier copy, whether there is one).
    `content` is the mail's fingerprint().

    A Message-ID seen before is a copy when the content is the same, or when sender and Date
    are. Otherwise it is a different mail reusing the ID (monitoring scripts do this): it gets
    a longer key, the ID and its content hash, and is kept, never dropped as a duplicate. A mail
    found under that longer key has the same content: a copy, and the search ends there. (The
    longer key is told by comparing with the first, not by a "#" in it: Message-IDs hold "#".)
    """
    key = first = dedupe_key(mail)
    while True:
        row = session.execute(
            select(Message.from_addr, Message.date, Message.content_sha256, Ticket.number)
            .outerjoin(Ticket, Ticket.id == Message.ticket_id)
            .where(Message.dedupe_key == key)
        ).first()
        if row is None:
            return key, None, False
        same_mail = row.content_sha256 == content or (
            mail.date is not None and (row.from_addr, row.date) == (mail.from_addr, mail.date)
        )
        if same_mail or not key.startswith("mid:") or key != first:
            return key, row.number, True
        log.warning("msgid=%s reused by a different mail from %s: kept as well", mail.logged_id, mail.from_addr)
        key = f"{key}#{content_hash(mail)}"


def dedupe(item: Incoming) -> Outcome | None:
    """A copy of a stored mail ends here (nothing changes); any other gets its key."""
    item.content_sha256 = fingerprint(item.mail)
    item.key, earlier_ticket, seen = earlier_copy(item.session, item.mail, item.content_sha256)
    if seen:
        item.ticket_number = earlier_ticket
        item.note("dedupe", f"already stored as {item.key}")
        return Outcome.DUPLICATE
    item.note("dedupe", item.key)
    return None
