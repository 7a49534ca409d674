"""Outgoing mail is born here: a Jinja2 template rendered into an outbox row, in the caller's
transaction. Nothing is sent from here; the outbox sender delivers later."""

from __future__ import annotations

import email.utils
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgate import subject as subjects
from mailgate import tokens
from mailgate.config import Settings
from mailgate.headers import LOOP_HEADER
from mailgate.models import Outbox, OutboxState, Person, Ticket
from mailgate.resources import templates_dir

log = logging.getLogger("mailgate.notify")


class Templates:
    """Templates named after the occasion: <name>/subject.txt and <name>/body.txt.

    A site directory, when given, is searched first so a site can reword any mail.
    """

    def __init__(self, site_dir: Path | None = None) -> None:
        paths = [str(p) for p in (site_dir, templates_dir()) if p is not None]
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(paths),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["size"] = human_size

    def render(self, name: str, context: dict[str, Any]) -> tuple[str, str]:
        subject = self.env.get_template(f"{name}/subject.txt").render(context)
        body = self.env.get_template(f"{name}/body.txt").render(context)
        return " ".join(subject.split()), body.rstrip() + "\n"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def local_time(settings: Settings, moment: datetime | None) -> str:
    """'Tuesday 14:00 (Europe/Berlin)' — the way a person reads a promise."""
    if moment is None:
        return ""
    zone = settings.tickets.timezone
    return f"{moment.astimezone(ZoneInfo(zone)):%A %d %B %H:%M} ({zone})"


@dataclass(frozen=True)
class Outgoing:
    """Everything about one mail to queue, apart from its text."""

    kind: str
    occasion: str
    ticket: Ticket
    to: Person
    template: str
    context: dict[str, Any]
    automatic: bool = True
    in_reply_to: str | None = None


def acks_recently(session: Session, address: str, now: datetime, window_minutes: int) -> int:
    since = now - timedelta(minutes=window_minutes)
    return (
        session.scalar(
            select(func.count(Outbox.id)).where(
                Outbox.kind == "ack", Outbox.rcpt_key == address, Outbox.created_at >= since
            )
        )
        or 0
    )


def queue(
    session: Session,
    settings: Settings,
    templates: Templates,
    secret: bytes,
    mail: Outgoing,
    now: datetime,
    *,
    ticket_is_new: bool = False,
) -> Outbox | None:
    """Render `mail` and add it to the outbox; None if this occasion was already queued.

    ticket_is_new: the ticket was opened in this transaction, so nothing can have been queued
    for it yet (saves a query on every new ticket).
    """
    if not ticket_is_new and session.scalar(select(Outbox.id).where(Outbox.occasion == mail.occasion)):
        return None
    if mail.to.undeliverable_since is not None:
        log.info("not queuing %s for ticket %s: %s is undeliverable", mail.kind, mail.ticket.number, mail.to.address)
        return None
    if not mail.to.address.isascii():
        # An RFC 6532 address needs SMTPUTF8 end to end; we do not send it rather than mangle it.
        log.warning("not queuing %s for ticket %s: %s needs SMTPUTF8", mail.kind, mail.ticket.number, mail.to.address)
        return None
    prefix = settings.tickets.tag_prefix
    support = settings.addresses.support
    token = tokens.make_token(secret, mail.ticket.number, mail.to.id)
    domain = support.partition("@")[2]
    context = {
        "ticket": mail.ticket,
        "tag": subjects.format_tag(prefix, mail.ticket.number),
        "prefix": prefix,
        "recipient": mail.to,
        "desk_name": settings.addresses.display_name,
        **mail.context,
    }
    subject, body = templates.render(mail.template, context)
    message_id = tokens.message_id(token, mail.kind, domain)
    headers: dict[str, str] = {
        "From": email.utils.formataddr((settings.addresses.display_name, support)),
        "To": email.utils.formataddr((mail.to.name, mail.to.address)),
        "Subject": subject
        if subjects.find_tag(prefix, subject)
        else subjects.tagged_subject(prefix, mail.ticket.number, subject),
        "Message-ID": message_id,
        "Date": email.utils.format_datetime(now),
        "Reply-To": email.utils.formataddr((settings.addresses.display_name, tokens.plus_address(support, token))),
        LOOP_HEADER: settings.outgoing.loop_id,
        # Ask Exchange and friends not to send out-of-office or read receipts back to us.
        "X-Auto-Response-Suppress": "All",
    }
    if mail.automatic:
        headers["Auto-Submitted"] = "auto-replied"
    if mail.in_reply_to:
        headers["In-Reply-To"] = f"<{mail.in_reply_to}>"
        headers["References"] = f"<{mail.in_reply_to}>"
    row = Outbox(
        ticket_id=mail.ticket.id,
        kind=mail.kind,
        occasion=mail.occasion,
        message_id=message_id,
        mail_from=support,
        rcpt_key=mail.to.address,
        recipients=[mail.to.address],
        headers=headers,
        body=body,
        state=OutboxState.QUEUED,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(row)  # written with the rest of the transaction: one INSERT for all its outbox rows
    return row
