"""The ticket store: SQLAlchemy 2 typed models. Imports nothing of the project.

The schema is created only by alembic migrations (alembic/versions); tests check that the
migrations and these models agree.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Explicit constraint names keep migrations identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Timestamp = Annotated[datetime, mapped_column(UTCDateTime())]
Address = Annotated[str, mapped_column(String(320))]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Status(enum.StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Priority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class SlaStage(enum.IntEnum):
    """How far a ticket's deadline (first response, resolution) got; see sla/scans.py."""

    NONE = 0
    WARNED = 1
    ESCALATED = 2
    ESCALATED_AGAIN = 3  # the last level: nothing more fires for this deadline
    MET = 9  # the first response was given


class MessageKind(enum.StrEnum):
    """What a stored incoming mail turned out to be."""

    NEW_TICKET = "new_ticket"
    REPLY = "reply"
    AUTO = "auto"  # auto-generated: stored, never acknowledged, never changes a status
    BOUNCE = "bounce"  # a delivery status notification
    HELD = "held"  # from a source over the circuit breaker's limits: stored, no mail sent
    # Stored, changing nothing, its sender told why: mail that would open a ticket for a sender
    # intake.unknown_senders refuses (on no ticket), or a command mail refused whole (not
    # authenticated, a line wrong or not allowed; ingest/commands.py).
    REFUSED = "refused"


class OutboxState(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DEAD = "dead"


class Counter(Base):
    """Named counters (ticket numbers): UPDATE … RETURNING keeps them gap-safe under concurrency."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Person(Base):
    __tablename__ = "people"
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[Address] = mapped_column(unique=True)
    name: Mapped[str] = mapped_column(Text, default="")
    department: Mapped[str] = mapped_column(Text, default="")
    location: Mapped[str] = mapped_column(Text, default="")
    manager_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    role: Mapped[str] = mapped_column(String(20), default="requester")
    team: Mapped[str] = mapped_column(String(100), default="")
    # Set by a permanent delivery failure: we stop mailing this address.
    undeliverable_since: Mapped[Timestamp | None]
    undeliverable_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[Timestamp]

    @property
    def is_staff(self) -> bool:
        return self.role in ("agent", "staff", "dispatcher", "admin")


class Ticket(Base):
    __tablename__ = "tickets"
    # The SLA scans (sla/scans.py) look for tickets of a status whose instant has passed.
    __table_args__ = (
        # The stage first: what was handled drops out of the range, and a scan over 100,000
        # tickets reads only those whose moment has come.
        Index(
            "ix_tickets_status_first_response_stage_warn_at", "status", "first_response_stage", "first_response_warn_at"
        ),
        Index("ix_tickets_status_first_response_stage_due", "status", "first_response_stage", "first_response_due"),
        Index("ix_tickets_status_resolution_stage_warn_at", "status", "resolution_stage", "resolution_warn_at"),
        Index("ix_tickets_status_resolution_stage_due", "status", "resolution_stage", "resolution_due"),
        Index("ix_tickets_status_idle_reminded_last_activity_at", "status", "idle_reminded", "last_activity_at"),
        Index("ix_tickets_status_created_at", "status", "created_at"),
        Index("ix_tickets_status_resolved_at", "status", "resolved_at"),
        Index("ix_tickets_status_pending_since", "status", "pending_since"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger, unique=True)
    subject: Mapped[str] = mapped_column(Text)
    requester_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=Status.NEW, index=True)
    priority: Mapped[str] = mapped_column(String(20), default=Priority.NORMAL)
    category: Mapped[str | None] = mapped_column(String(100))
    team: Mapped[str | None] = mapped_column(String(100))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"), index=True)
    department: Mapped[str] = mapped_column(Text, default="")
    location: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[Timestamp]
    first_response_due: Mapped[Timestamp | None]
    first_response_at: Mapped[Timestamp | None]
    resolution_due: Mapped[Timestamp | None]
    resolved_at: Mapped[Timestamp | None]
    closed_at: Mapped[Timestamp | None]
    last_activity_at: Mapped[Timestamp]
    # The alert it was opened for (routing/alerts.py): the alert's repeats go on it while it is open.
    alert_key: Mapped[str | None] = mapped_column(String(300), index=True)
    # The SLA clock (sla/policy.py): paused while pending, since `pending_since`, until the
    # requester replies or `pending_until` (#pending until) passes; the pauses so far as
    # [[start, end], …] ISO instants, so that the paused business time can be counted again in
    # another calendar when the team changes.
    pending_since: Mapped[Timestamp | None]
    pending_until: Mapped[Timestamp | None]
    pauses: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    # When the assignee is warned (sla.warn_at of a target): stored, so the scans are queries.
    first_response_warn_at: Mapped[Timestamp | None]
    resolution_warn_at: Mapped[Timestamp | None]
    # Imported as history (`mailgate import`): it never escalates nor reminds anyone.
    imported: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # How far each target's deadline got (sla/scans.py Stage): warned, escalated, met. Set back
    # when the deadline moves; the scans' indexes lead with it.
    first_response_stage: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    resolution_stage: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    # The assignee was reminded of this quiet spell; the next activity sets it back.
    idle_reminded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # #merge N (migration 0012): later mail to this ticket goes on N.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    # The requester's answer to the auto-close mail's "how did we do?", 1 to 5 (migration 0016).
    rating: Mapped[int | None] = mapped_column(SmallInteger)
    rated_at: Mapped[Timestamp | None]

    requester: Mapped[Person] = relationship(foreign_keys=[requester_id])
    assignee: Mapped[Person | None] = relationship(foreign_keys=[assignee_id])
    messages: Mapped[list[Message]] = relationship(
        back_populates="ticket", order_by="Message.id", foreign_keys="Message.ticket_id"
    )


class SlaFiring(Base):
    """What an SLA scan did (a warning, an escalation, a reminder, an auto-close): written before
    its mail is queued, in the same transaction, and unique per (ticket, kind, level, deadline),
    so two daemons, or a restart, never do it twice. `deadline` is the instant it answers (a
    due date, the start of a pause): a new deadline (a priority change) may fire again."""

    __tablename__ = "sla_firings"
    __table_args__ = (UniqueConstraint("ticket_id", "kind", "level", "deadline"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    kind: Mapped[str] = mapped_column(String(40))
    level: Mapped[int] = mapped_column(Integer)
    deadline: Mapped[Timestamp]
    fired_at: Mapped[Timestamp]
    recipient: Mapped[Address] = mapped_column(default="")
    note: Mapped[str] = mapped_column(Text, default="")


class Participant(Base):
    """Who is on a ticket (requester, cc, staff): only they may thread by subject tag alone."""

    __tablename__ = "participants"
    __table_args__ = (UniqueConstraint("ticket_id", "person_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    role: Mapped[str] = mapped_column(String(20))


class ReplyTokenGeneration(Base):
    """The current generation of one person's reply token for one ticket (tokens.py): a row only
    once it was replaced (mailgate/exposure.py); none means generation 0, every token issued
    before the first replacement."""

    __tablename__ = "reply_token_generations"
    __table_args__ = (UniqueConstraint("ticket_id", "person_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    generation: Mapped[int] = mapped_column(Integer)
    replaced_at: Mapped[Timestamp]


class TicketLink(Base):
    """A ticket that refers to another (a stranger quoting a tag, a follow-up to a closed one)."""

    __tablename__ = "ticket_links"
    __table_args__ = (UniqueConstraint("ticket_id", "other_id", "kind"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    other_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30))


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    direction: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(20))
    # Unique per incoming mail: the normalised Message-ID, else a hash of the content.
    dedupe_key: Mapped[str | None] = mapped_column(String(1000), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(1000), index=True)
    # SHA-256 of subject, text and attachments: tells a copy from another mail reusing a Message-ID.
    content_sha256: Mapped[str] = mapped_column(String(64), default="")
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    refs: Mapped[list[Any]] = mapped_column(default=list)
    from_addr: Mapped[Address] = mapped_column(default="")
    from_name: Mapped[str] = mapped_column(Text, default="")
    to_addrs: Mapped[list[Any]] = mapped_column(default=list)
    cc_addrs: Mapped[list[Any]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    date: Mapped[Timestamp | None]
    received_at: Mapped[Timestamp]
    source: Mapped[str] = mapped_column(String(100))
    sender_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"), index=True)
    text_new: Mapped[str] = mapped_column(Text, default="")
    text_full: Mapped[str] = mapped_column(Text, default="")
    auto_reasons: Mapped[list[Any]] = mapped_column(default=list)
    # Why this mail landed where it did: [{"step": …, "decision": …}, …]
    trace: Mapped[list[Any]] = mapped_column(default=list)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    # An internal note (`#note`): staff only, never relayed to the requester.
    internal: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    ticket: Mapped[Ticket | None] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(order_by="Attachment.id")


class Attachment(Base):
    """Metadata of a stored file; the bytes live content-addressed under the data directory."""

    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(Text, default="")
    # False when over the size limit: only this note is kept, and the requester is told.
    stored: Mapped[bool] = mapped_column(Boolean, default=True)
    note: Mapped[str] = mapped_column(Text, default="")


class Event(Base):
    """Audit trail: who changed what on which ticket, when, through which channel."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(50))
    field: Mapped[str | None] = mapped_column(String(50))
    old: Mapped[str | None] = mapped_column(Text)
    new: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(100))
    # What proved the actor did it (ingest/authenticate.py), e.g. "reply token issued to
    # alice@example.com" or "dmarc=pass header.from=example.com (mx.example.com)"; empty
    # for what mailgate itself or an unproven sender did.
    evidence: Mapped[str] = mapped_column(Text, default="", server_default="")
    at: Mapped[Timestamp]


class Outbox(Base):
    """Outgoing mail, queued in the transaction that caused it; a sender delivers it later."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "state", "next_attempt_at"),
        # Acknowledgement rate limit: recent rows of one kind to one address.
        Index("ix_outbox_rate", "rcpt_key", "kind", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    # One row per occasion (e.g. "ack:42"): a second attempt to queue it is a no-op.
    occasion: Mapped[str | None] = mapped_column(String(200), unique=True)
    message_id: Mapped[str] = mapped_column(String(1000), unique=True)
    mail_from: Mapped[Address]
    # The mailbox the first recipient reaches (addresses.fold_address): acknowledgements are
    # rate-limited by it, so victim+1@ … victim+20@ count as one.
    rcpt_key: Mapped[Address]
    # The mail this answers was proven to come from its recipient (the receiving MTA's DMARC
    # pass): such acknowledgements are counted apart, so mail forged in a requester's name
    # cannot use up the acknowledgements of the requester's real mail.
    rcpt_proven: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    recipients: Mapped[list[Any]]
    headers: Mapped[dict[str, Any]]
    body: Mapped[str] = mapped_column(Text)
    # Stored files it carries, [{"sha256", "filename", "content_type", "size"}, …]: read from the
    # attachment store when it is rendered, so a relayed file is not copied into the database.
    attachments: Mapped[list[Any]] = mapped_column(default=list, server_default=text("'[]'"))
    state: Mapped[str] = mapped_column(String(10), default=OutboxState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[Timestamp]
    last_error: Mapped[str] = mapped_column(Text, default="")
    # The daemon delivering it (see outbox.claim_due): its next start takes the claim back.
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[Timestamp]
    sent_at: Mapped[Timestamp | None]


class Quarantine(Base):
    """Mail that could not be stored as a message: raw bytes, envelope and reason, until retried."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(100))
    # The envelope it came with, when the transport knew it: a retry threads like the original
    # (a reply token may be in the recipient address alone).
    envelope_sender: Mapped[str | None] = mapped_column(Text)
    envelope_recipients: Mapped[list[Any] | None]
    received_at: Mapped[Timestamp]
    released_at: Mapped[Timestamp | None]
    released_as: Mapped[str | None] = mapped_column(Text)


class SpoolEntry(Base):
    """A mail the SMTP listener accepted and ingest() has not yet taken: its durable queue.

    The listener answers 250 once the row is committed; the ingest worker removes the row after
    ingest() committed the mail (a crash in between re-offers it, and dedupe makes that a no-op).
    """

    __tablename__ = "spool"
    __table_args__ = (Index("ix_spool_due", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    source: Mapped[str] = mapped_column(String(100))
    envelope_sender: Mapped[str] = mapped_column(Text)
    envelope_recipients: Mapped[list[Any]]
    received_at: Mapped[Timestamp]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Also the claim: a worker taking the row moves it into the future while it ingests.
    next_attempt_at: Mapped[Timestamp]
    last_error: Mapped[str] = mapped_column(Text, default="")


class MailboxState(Base):
    """Where the IMAP poller left off in each mailbox."""

    __tablename__ = "mailbox_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[Timestamp]


class BreakerEvent(Base):
    """A new ticket a source opened: what the circuit breaker counts (see ingest/breaker.py).
    A source is "sender:<address>", "address:<folded address>" or "domain:<domain>"."""

    __tablename__ = "breaker_events"
    __table_args__ = (Index("ix_breaker_events_source_at", "source", "at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(330))
    at: Mapped[Timestamp]


class BreakerTrip(Base):
    """A source over its limit: its mail is held (stored, no ticket of its own, no outgoing mail)
    until `until` passes with no more mail from it, or an admin lifts it."""

    __tablename__ = "breaker_trips"
    __table_args__ = (Index("ix_breaker_trips_source_until", "source", "until"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(330))
    # The limit it went over, for the dispatcher and `mailgate limits list`: "8 in 60 minutes".
    limit: Mapped[str] = mapped_column(String(100))
    window_minutes: Mapped[int] = mapped_column(Integer)
    tripped_at: Mapped[Timestamp]
    # Each held mail moves it on by the window: a robot that keeps sending stays held.
    until: Mapped[Timestamp]
    held: Mapped[int] = mapped_column(Integer, default=0)
    # The ticket held mail goes on when its sender has no open ticket: one per trip.
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    lifted_at: Mapped[Timestamp | None]
    lifted_by: Mapped[str] = mapped_column(String(320), default="")
