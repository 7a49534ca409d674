"""One mail on its way through the steps of ingest(): what it is, where it runs, and what each
step decided about it. Every step takes this one object; nothing else travels between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from mailgate.app import App
from mailgate.ingest.parse import ParsedMail
from mailgate.models import Message, Person, Ticket

if TYPE_CHECKING:
    from mailgate.ingest.authenticate import Proof
    from mailgate.ingest.bounces import Bounce
    from mailgate.ingest.commands import CommandMail
    from mailgate.ingest.history import History
    from mailgate.ingest.thread import ThreadDecision


@dataclass
class Incoming:
    app: App
    session: Session  # the one transaction the whole mail is stored in
    mail: ParsedMail
    source: str
    now: datetime  # when ingest() runs: what it changes and sends is dated this
    arrived: datetime  # when the mail reached us: earlier if it waited in the spool
    envelope_recipients: list[str]  # lowercased RCPT TO, when the transport knows them
    history: History | None = None  # `mailgate import`: old mail, dated from its headers, answered never
    # Attachment files this transaction created: removed again if it rolls back.
    new_files: list[str] = field(default_factory=list)
    # Why this mail landed where it did: [{"step": …, "decision": …}, …], kept on the message.
    trace: list[dict[str, str]] = field(default_factory=list)

    # What the steps decided, each set by the step named beside it (unset before it ran).
    key: str = field(init=False)  # dedupe: the key it is stored under
    content_sha256: str = field(init=False)  # dedupe: fingerprint(), what a person reads, hashed once
    sender: Person = field(init=False)  # identify
    reasons: list[str] = field(default_factory=list)  # classify: why it is automatic ([]: a person wrote it)
    reaction: bool = False  # classify: answers earlier mail (auto-reply, bounce): never a ticket of its own
    bounce: Bounce | None = None  # classify: what a delivery report says
    thread: ThreadDecision = field(init=False)  # thread: the ticket it belongs to, and why
    proof: Proof | None = None  # authenticate: what proves the sender wrote it (None: nothing)
    # Set by what assigns the ticket in this mail (a routing rule, #assign, #take): the person
    # now working on it, whom the relay tells, with the thread so far.
    assigned: Person | None = None
    internal: bool = False  # commands (#note): an internal note, never relayed to the requester
    # commands: the new text with the command lines taken out (None: the mail had no commands);
    # what a relay passes on.
    text_after_commands: str | None = None
    status_set: bool = False  # commands: a command set the status, the conversation does not move it
    # Fields of the steps of this session's helpers, each under its step's name:
    commands: CommandMail | None = None  # commands: the accepted command lines, for execute
    # apply: the ticket it went to and the stored message; dedupe or apply: the ticket's number
    # (for a duplicate, the earlier copy's).
    ticket: Ticket | None = None
    ticket_number: int | None = None
    dispatcher: Person = field(init=False)  # apply, for a new ticket: who is told of it
    linked: Ticket | None = None  # apply: the ticket a new one was linked to
    link_reason: str = ""  # apply: why, for the dispatcher
    message: Message | None = None
    quarantine_id: int | None = None  # screen: the quarantine row it went to instead
    queued: int = 0  # notify: outgoing mails queued

    def note(self, step: str, decision: str) -> None:
        self.trace.append({"step": step, "decision": decision})
