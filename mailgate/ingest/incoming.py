"""One mail on its way through ingest(): what the steps so far found out about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mailgate.ingest.parse import ParsedMail
from mailgate.models import Person


@dataclass
class Incoming:
    mail: ParsedMail
    key: str  # the dedupe key it is stored under
    content_sha256: str  # dedupe.fingerprint(): what a person reads, hashed once
    source: str
    now: datetime  # when ingest() runs: what it changes and sends is dated this
    arrived: datetime  # when the mail reached us: earlier if it waited in the spool
    sender: Person
    reasons: list[str] = field(default_factory=list)  # why it is auto-generated, if it is
    # Why this mail landed where it did: [{"step": …, "decision": …}, …], kept on the message.
    trace: list[dict[str, str]] = field(default_factory=list)
    # Attachment files this transaction created: removed again if it rolls back.
    new_files: list[str] = field(default_factory=list)

    def note(self, step: str, decision: str) -> None:
        self.trace.append({"step": step, "decision": decision})
