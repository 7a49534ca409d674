"""Raw bytes -> ParsedMail: decoded headers, readable text, attachments. No database here.

mail-parser does the tolerant decoding (RFC 2047 words, broken charsets, defects); the MIME tree
it keeps (`.message`) is walked here for attachments, so their bytes come out exactly as sent.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message

import mailparser

from mailgate.config import Parsing
from mailgate.ingest import bounded
from mailgate.ingest.attachments import MailAttachment, extract_attachments
from mailgate.ingest.body import body_texts
from mailgate.ingest.charsets import declared_charset
from mailgate.ingest.mime import read_tree
from mailgate.ingest.text import decode_words, repair_text

log = logging.getLogger(__name__)

_HEADER_LINE = re.compile(rb"^(From |[!-9;-~]+[ \t]*:)")
_LEADING_JUNK = re.compile(rb"\A(?:\xef\xbb\xbf)?(?:[ \t]*\r?\n)*")
_ROBOT = re.compile(r"\b(mailer-daemon|postmaster|mail delivery)\b", re.I)
_MSGID = re.compile(r"<([^<>\s]+)>")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_EIGHT_BIT = re.compile(r"[\udc80-\udcff]")  # undeclared 8-bit bytes, as the stdlib keeps them
# Bounds that keep hostile input storable on every database (index entries, column sizes).
MAX_ID_CHARS = 900
MAX_ADDRESS_CHARS = 320
MAX_NAME_CHARS = 500
MAX_REFERENCES = 100


class Unparseable(Exception):
    """The bytes are not a mail we can do anything with; the message is the reason."""


@dataclass
class ParsedMail:
    raw: bytes
    message: Message
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    from_addr: str
    from_name: str
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    subject: str
    date: datetime | None
    text: str
    attachments: list[MailAttachment] = field(default_factory=list)
    # SMTP MAIL FROM, when the transport knows it ("" is the null sender of bounces).
    envelope_sender: str | None = None
    # Where from_addr was read: "from", or "sender", "reply-to", "return-path", "envelope"
    # when the From was missing or unusable.
    sender_header: str = "from"
    # What the parsing bounds left out of this view of the mail (the raw bytes are whole).
    notes: list[str] = field(default_factory=list)

    def header(self, name: str) -> str:
        """A header's decoded value ('' when absent)."""
        values = self.headers(name)
        return values[0] if values else ""

    def headers(self, name: str) -> list[str]:
        return raw_headers(self.message, name)

    @property
    def logged_id(self) -> str:
        """The Message-ID as the logs print it: "<id>", or "(none)" for mail without one."""
        return f"<{self.message_id}>" if self.message_id else "(none)"

    @property
    def thread_ids(self) -> list[str]:
        """In-Reply-To first, then References from the newest back."""
        seen: dict[str, None] = dict.fromkeys(self.in_reply_to)
        seen.update(dict.fromkeys(reversed(self.references)))
        return list(seen)


def _clean_id(value: str) -> str:
    """A Message-ID fit to store and to quote back: no controls or spaces, bounded length."""
    value = "".join(_CONTROLS.sub("", value).split())
    if len(value) > MAX_ID_CHARS:  # keep it unique without letting it overflow an index entry
        value = value[: MAX_ID_CHARS - 17] + "~" + hashlib.sha256(value.encode()).hexdigest()[:16]
    return value


def normalise_message_id(value: str) -> str | None:
    """'<Abc@Host>' -> 'Abc@Host' (the local part is case-sensitive, RFC 5322 3.6.4)."""
    ids = message_ids(value)
    if ids:
        return ids[0]
    return _clean_id(value) or None


def message_ids(value: str | None) -> list[str]:
    return [cleaned for found in _MSGID.findall(value or "") if (cleaned := _clean_id(found))]


def raw_headers(message: Message, name: str) -> list[str]:
    """Decoded values of header `name`, read from the raw header lines.

    Going through the raw lines keeps undeclared 8-bit bytes (as surrogate escapes) for
    repair_text, where the stdlib's Header objects would silently drop them.
    """
    wanted = name.lower()
    values = [str(v) for k, v in message.raw_items() if k.lower() == wanted]
    charset = declared_charset(message) if any(_EIGHT_BIT.search(v) for v in values) else None
    return [_decode_header(v, charset) for v in values]


def _decode_header(value: object, charset: str | None = None) -> str:
    return decode_words(repair_text(str(value), charset))


def _addresses(values: list[tuple[str, str]] | None, charset: str | None = None) -> list[tuple[str, str]]:
    """(name, address) pairs with names on one line and only addresses a reply could reach."""
    out = []
    for name, addr in values or []:
        addr = "".join(_CONTROLS.sub("", repair_text(addr or "")).split()).lower()
        if "@" in addr and len(addr) <= MAX_ADDRESS_CHARS:
            # decode_words also puts a name on one line: a decoded line break must not reach a header.
            out.append((decode_words(repair_text(name or "", charset))[:MAX_NAME_CHARS], addr))
    return out


def _raw_pairs(message: Message, header: str) -> list[tuple[str, str]] | None:
    """The pairs of a header that carries raw 8-bit bytes, read from its raw lines, else None:
    mail-parser (and Message.get_all) hand such bytes back as escapes or U+FFFD."""
    raw = [str(v) for k, v in message.raw_items() if k.lower() == header]
    return email.utils.getaddresses(raw) if any(_EIGHT_BIT.search(v) for v in raw) else None


def _date(message: Message) -> datetime | None:
    value = message.get("Date")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(str(value))
        # A date next to the calendar's end (31 Dec 9999 -1200) overflows on its way to UTC.
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _sender(
    parsed: mailparser.MailParser, message: Message, envelope_sender: str | None, charset: str | None = None
) -> tuple[str, str, str]:
    """From, else Sender, else Reply-To, else Return-Path: who a reply should go to, and the
    header (or "envelope") the address came from."""
    for header in ("from", "sender", "reply-to"):
        raw = _raw_pairs(message, header)
        found = _addresses(raw or email.utils.getaddresses([str(v) for v in message.get_all(header, [])]), charset)
        if header == "from" and parsed.from_ and raw is None:
            found = _addresses(parsed.from_) or found
        if found:
            return (*found[0], header)
    return_path = message_ids(str(message.get("Return-Path", "")))
    if return_path and "@" in return_path[0]:
        return "", return_path[0].lower(), "return-path"
    # A script or scanner that wrote no From: the envelope address, repaired like a header's.
    if envelope := _addresses([("", envelope_sender.strip("<> "))] if envelope_sender else []):
        return (*envelope[0], "envelope")
    robot = _ROBOT.search(" ".join(str(v) for v in message.get_all("from", [])))
    if robot or str(message.get("Return-Path", "")).strip() == "<>":
        # A bounce from "MAILER-DAEMON <>" or an unqualified <MAILER-DAEMON>: keep it as a bounce
        # (classify.robot_sender) rather than quarantine it; .invalid never receives mail.
        return "Mail Delivery System", "mailer-daemon@invalid", "from"
    return "", "", ""


def parse(raw: bytes, max_bytes: int, envelope_sender: str | None = None, bounds: Parsing | None = None) -> ParsedMail:
    """Parse `raw`; raise Unparseable (with the reason) when it is not a usable mail.

    `bounds` cap the work (see mime.py); what they cut is listed in the result's notes.
    """
    bounds = bounds or Parsing()
    if not raw.strip():
        raise Unparseable("empty input")
    if len(raw) > max_bytes:
        raise Unparseable(f"{len(raw)} bytes is over the limit of {max_bytes} (limits.max_message_bytes)")
    mime = _LEADING_JUNK.sub(b"", raw)  # a UTF-8 BOM or blank lines an editor or a pipe put in front
    if not _HEADER_LINE.match(mime):
        raise Unparseable("no header section: the input does not start with a mail header")
    try:
        tree = read_tree(mime, bounds)  # email.message_from_bytes, bounded
        message, notes = tree.message, tree.notes
        if message.is_multipart() and message.epilogue is None:
            message.epilogue = ""  # mail-parser 4.8 calls .index() on it when a start boundary is missing
        parsed = mailparser.MailParser(message)
    except Exception as exc:  # mail-parser raises many types on hostile input
        raise Unparseable(f"MIME parser failed: {type(exc).__name__}: {exc}") from exc
    message = parsed.message
    charset = declared_charset(message)
    from_name, from_addr, sender_header = _sender(parsed, message, envelope_sender, charset)
    if not from_addr:
        raise Unparseable("no sender address in From, Sender, Reply-To, Return-Path or the envelope")

    plain_parts, html_parts = body_texts(message)  # decoded by charsets.py, not by mail-parser
    plain = [t for t in plain_parts if t.strip()]
    text = bounded.plain_text(plain, bounds, notes) if plain else bounded.html_text(html_parts, bounds, notes)
    attachments, attachment_text = extract_attachments(message)
    if not text.strip() and attachment_text:
        text = attachment_text  # e.g. the body of an Outlook winmail.dat

    return ParsedMail(
        raw=raw,
        message=message,
        message_id=normalise_message_id(str(message.get("Message-ID", "") or "")),
        in_reply_to=message_ids(str(message.get("In-Reply-To", "") or "")),
        # The newest references are the ones that thread; a mail quoting 10,000 is hostile.
        references=message_ids(" ".join(str(v) for v in message.get_all("References", [])))[-MAX_REFERENCES:],
        from_addr=from_addr,
        sender_header=sender_header,
        from_name=from_name,
        to=_addresses(_raw_pairs(message, "to") or parsed.to, charset),
        cc=_addresses(_raw_pairs(message, "cc") or parsed.cc, charset),
        subject=bounded.subject(next(iter(raw_headers(message, "Subject")), ""), bounds, notes),
        date=_date(message),
        text=text.strip("\n"),
        attachments=attachments,
        notes=notes,
    )
