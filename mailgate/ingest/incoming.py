"""One mail on its way through the steps of ingest(): what it is, where it runs, and what each
step decided about it. Every step takes this one object; nothing else travels between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from mailgate.addresses import fold_address
from mailgate.app import App
from mailgate.ingest.parse import ParsedMail
from mailgate.models import Message, Person, Ticket
from mailgate.outgoing.outbox import OutgoingMail, queue, queued_recently

if TYPE_CHECKING:
    from mailgate.ingest.authenticate import Proof
    from mailgate.ingest.bounces import Bounce
    from mailgate.ingest.commands import CommandMail
    from mailgate.ingest.forwarded import OnBehalf
    from mailgate.ingest.history import History
    from mailgate.ingest.thread import ThreadDecision
    from mailgate.routing.alerts import Alert
    from mailgate.routing.rules import Hit


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
    # authenticate: the mail carried the sender's own reply token, but one replaced since it was
    # shown to others (ingest/exposure.py): an explanation of the refusal says so.
    token_replaced: bool = False
    # Set by what assigns the ticket in this mail (a routing rule, #assign, #take): the person
    # now working on it, whom the relay tells, with the thread so far.
    assigned: Person | None = None
    internal: bool = False  # commands (#note): an internal note, never relayed to the requester
    # commands: the new text with the command lines taken out (None: the mail had no commands);
    # what a relay passes on.
    text_after_commands: str | None = None
    status_set: bool = False  # commands: a command set the status, the conversation does not move it
    # route helper: what an alert source's mail reports (alerts), and the routing rules that
    # matched a new ticket, with what each set (route); the dispatcher's notice names them.
    alert: Alert | None = None
    route_rules: list[Hit] = field(default_factory=list)
    # commands (#close <text>): what was done, in the sender's words; relay puts it in the
    # requester's close notice.
    close_text: str = ""
    # forwarded: a proven staff member forwarded someone's mail; the new ticket is that person's
    # (see the `requester` property), the forwarder watches it.
    on_behalf: OnBehalf | None = None
    commands: CommandMail | None = None  # commands: the accepted command lines, for execute
    # rate: the requester's reply is a rating of a closed ticket and nothing more; it neither
    # reopens the ticket (apply) nor goes to the assignee (relay).
    rating_only: bool = False
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

    @property
    def requester(self) -> Person:
        """Whom a new ticket from this mail is for, and whom its acknowledgement goes to: the
        sender, or the person whose mail a proven staff member forwarded (see forwarded)."""
        return self.on_behalf.requester if self.on_behalf is not None else self.sender

    def note(self, step: str, decision: str) -> None:
        self.trace.append({"step": step, "decision": decision})

    def send(self, step: str, outgoing: OutgoingMail, *, what: str = "", ticket_is_new: bool = False) -> bool:
        """Queue `outgoing` in this mail's transaction, counted, and noted under `step` as
        "<what> to <address>". False when the outbox holds it already (the same occasion: a
        copy of this mail, or a rerun) or its recipient cannot be mailed. ticket_is_new: the
        ticket was opened in this transaction, so nothing can have been queued for it yet."""
        app = self.app
        row = queue(
            self.session, app.settings, app.templates, app.secret, outgoing, self.now, ticket_is_new=ticket_is_new
        )
        if row is None:
            return False
        self.queued += 1
        self.note(step, f"{what or outgoing.kind} to {outgoing.to.address}")
        return True

    def answers_exhausted(self, kind: str, address: str) -> bool:
        """Whether `address` was sent limits.acks_per_sender mails of `kind` within the limits'
        window already: every automatic answer is bounded per mailbox, so a forger mailing in
        someone's name a thousand times makes a few of them, not a thousand."""
        limits = self.app.settings.limits
        with self.session.no_autoflush:  # what earlier transactions queued: no flush needed
            recent = queued_recently(self.session, [kind], fold_address(address), self.now, limits.ack_window_minutes)
        return recent >= limits.acks_per_sender
