"""Store an incoming mail: the message row with its raw bytes, and its attachments."""

from __future__ import annotations

import hashlib

from mailgate.ingest.incoming import Incoming
from mailgate.ingest.parse import ParsedMail
from mailgate.ingest.quotes import extract_reply
from mailgate.models import Attachment, Message, MessageKind, Ticket


def store_message(
    item: Incoming, ticket: Ticket | None, kind: MessageKind, content: ParsedMail | None = None
) -> Message:
    """The message row of `item` (on `ticket`, or on none), with its attachments: files up to
    limits.max_attachment_bytes are written to the attachment store, larger ones only noted.
    `content`: what the message shows instead of the mail's own headers, text and files (a
    forwarded original, see forwards.py); the raw mail is stored whole either way."""
    mail, store, attachment_limit = content or item.mail, item.app.store, item.app.settings.limits.max_attachment_bytes
    message = Message(
        ticket_id=ticket.id if ticket else None,
        direction="in",
        kind=kind,
        dedupe_key=item.key,
        content_sha256=item.content_sha256,
        message_id=mail.message_id,
        in_reply_to=" ".join(f"<{i}>" for i in mail.in_reply_to) or None,
        refs=mail.references,
        from_addr=mail.from_addr,
        from_name=mail.from_name,
        to_addrs=[a for _, a in mail.to],
        cc_addrs=[a for _, a in mail.cc],
        subject=mail.subject,
        date=mail.date,
        received_at=item.arrived,
        source=item.source,
        sender_id=item.sender.id,
        # On a reply, the ticket shows what is new; the full text stays beside it.
        text_new=extract_reply(mail.text) if kind == MessageKind.REPLY else mail.text,
        text_full=mail.text,
        auto_reasons=item.reasons,
        trace=list(item.trace),  # later steps' notes are set on it at the end (see pipeline)
        raw=mail.raw,
        attachments=[],  # known to be empty so far: reading it later needs no query
    )
    item.session.add(message)
    for part in mail.attachments:
        size = len(part.data)
        row = Attachment(size=size, content_type=part.content_type, filename=part.filename)
        if size > attachment_limit:
            # Not kept, but never silently dropped: a note on the ticket, and the requester is told.
            row.sha256, row.stored = hashlib.sha256(part.data).hexdigest(), False
            row.note = f"{size} bytes, over the limit of {attachment_limit} (limits.max_attachment_bytes): not kept"
        else:
            row.sha256, created = store.put(part.data)
            row.stored = True
            if created:
                item.new_files.append(row.sha256)
        message.attachments.append(row)
    # Not flushed: the commit writes it with everything else (one round of the unit of work
    # less per new ticket); a caller that needs message.id flushes first.
    return message
