"""Attachments: found in the MIME tree with their exact bytes, unpacked from Outlook's winmail.dat
(TNEF, via tnefparse), and kept content-addressed (by SHA-256) under the data directory."""

from __future__ import annotations

import binascii
import logging
import re
from dataclasses import dataclass
from email.message import Message

from tnefparse import TNEF
from tnefparse import properties as mapi
from tnefparse.tnef import TNEFAttachment

from mailgate.ingest.charsets import decode_bytes, decode_raw_8bit
from mailgate.ingest.filenames import safe_filename
from mailgate.ingest.text import decode_words, html_to_text, repair_text

log = logging.getLogger(__name__)

_TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}
_EIGHT_BIT = re.compile(r"[\udc80-\udcff]")  # undeclared 8-bit bytes, as the stdlib keeps them
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MIME_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")  # RFC 2045 type "/" subtype


@dataclass(frozen=True)
class MailAttachment:
    filename: str
    content_type: str
    data: bytes


def _filename(part: Message) -> str:
    """The file name a part gives (Content-Disposition's, else Content-Type's `name`), decoded:
    RFC 2231 in its declared charset, raw 8-bit bytes UTF-8 first, RFC 2047 words as Outlook sends
    them. The name is not yet safe to use: see filenames.safe_filename."""
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        value = _param(part, header, param)
        if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded as Latin-1)
            charset, _, text = value
            try:
                value = decode_bytes(text.encode("latin-1"), charset or None)
            except UnicodeEncodeError:  # the value was raw 8-bit text, already decoded
                value = text
        name = repair_text(str(value or ""))
        if "=?" in name:  # RFC 2047 words in a parameter: not allowed, but what Outlook sends
            name = decode_words(name)
        if name.strip():
            return name
    return ""


def _param(part: Message, header: str, param: str) -> str | tuple[str, str, str] | None:
    """A header parameter with its raw 8-bit bytes decoded: the stdlib makes U+FFFD of them."""
    raw = next((str(v) for k, v in part.raw_items() if k.lower() == header), None)
    if raw is None:
        return None
    if _EIGHT_BIT.search(raw):
        holder = Message()
        holder[header] = decode_raw_8bit(raw.encode("utf-8", "surrogateescape"), part.get_content_charset())
        part = holder
    value = part.get_param(param, header=header)
    return value if isinstance(value, str | tuple) else None


def _content_type(part: Message) -> str:
    """The part's MIME type without controls (a NUL makes PostgreSQL refuse the row) or what
    follows it ("application/pdf\x1b[2J" is a PDF); what is no type is a file of unknown type."""
    found = _MIME_TYPE.match(_CONTROLS.sub("", part.get_content_type()))
    return found.group()[:200] if found else "application/octet-stream"


def _is_body_part(part: Message) -> bool:
    """A text/plain or text/html part that is the message text rather than a file."""
    if part.get_content_maintype() != "text" or part.get_content_subtype() not in ("plain", "html"):
        return False
    return part.get_content_disposition() != "attachment" and not _filename(part)


def _payload_bytes(part: Message) -> bytes:
    raw = part.get_payload()
    if isinstance(raw, str) and part.get("Content-Transfer-Encoding", "").strip().lower() == "base64":
        # What get_payload(decode=True) does, without its list of every line and their join:
        # those cost three times a large file's size at once. a2b_base64 skips line ends.
        try:
            return binascii.a2b_base64(raw.encode("ascii", "surrogateescape"))
        except (binascii.Error, ValueError, UnicodeError):
            pass  # damaged base64: the stdlib's tolerant decoding below
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    return str(part.get_payload() or "").encode("utf-8", "surrogateescape")


def _message_bytes(message: Message) -> bytes:
    """A forwarded mail as bytes, even when its 8-bit headers make the generator give up."""
    try:
        return message.as_bytes()
    except (UnicodeError, LookupError, ValueError):
        pass
    try:
        return message.as_string().encode("utf-8", "surrogateescape")
    except (UnicodeError, LookupError, ValueError):
        head = "\n".join(f"{k}: {v}" for k, v in message.items())
        return f"{head}\n\n{message.get_payload()}".encode("utf-8", "replace")


def _unpack_tnef(data: bytes, fallback_name: str) -> tuple[list[MailAttachment], str]:
    """The files and text inside a winmail.dat; the file itself when it cannot be read."""
    try:
        tnef = TNEF(data)
    except Exception as exc:  # tnefparse raises plain exceptions on damaged input
        log.warning("winmail.dat could not be unpacked (%s); kept as it is", exc)
        return [MailAttachment(fallback_name, "application/ms-tnef", data)], ""
    codepage = tnef.codepage if isinstance(tnef.codepage, str) else None  # "cp1252", from the TNEF
    files = [MailAttachment(_tnef_name(a, codepage), "application/octet-stream", a.data) for a in tnef.attachments]
    text = ""
    if tnef.htmlbody:
        html = tnef.htmlbody
        text = html_to_text(html.decode("utf-8", "replace") if isinstance(html, bytes) else html)
    elif tnef.body:
        body = tnef.body
        text = repair_text(decode_bytes(body, codepage) if isinstance(body, bytes) else body)
    return files, text


def _tnef_name(attachment: TNEFAttachment, codepage: str | None) -> str:
    """A file's name inside a winmail.dat: the MAPI long name, else the title in the TNEF's code
    page (tnefparse's `name` reads the title as UTF-8 and raises on anything else)."""
    long_names = [a.data for a in attachment.mapi_attrs if a.name == mapi.MAPI_ATTACH_LONG_FILENAME]
    title = long_names[0] if long_names else attachment._name
    name = decode_bytes(title, codepage) if isinstance(title, bytes) else str(title or "")
    return repair_text(name.replace("\x00", ""))


def extract_attachments(message: Message) -> tuple[list[MailAttachment], str]:
    """Every file in `message` with its decoded bytes, plus any body text found inside TNEF."""
    found: list[MailAttachment] = []
    extra_text = ""
    skip: set[int] = set()
    for part in message.walk():
        if id(part) in skip:
            continue
        if part.get_content_type() == "message/rfc822" and part is not message:
            # A forwarded mail stays whole, as an .eml file, instead of being taken apart.
            for sub in part.walk():
                skip.add(id(sub))
            inner = part.get_payload()
            body = _message_bytes(inner[0]) if isinstance(inner, list) and inner else _payload_bytes(part)
            found.append(MailAttachment(_filename(part) or "forwarded.eml", "message/rfc822", body))
            continue
        if part.is_multipart() or _is_body_part(part):
            continue
        data = _payload_bytes(part)
        name = _filename(part)
        ctype = _content_type(part)
        if ctype in _TNEF_TYPES or name.lower() == "winmail.dat":
            files, text = _unpack_tnef(data, name or "winmail.dat")
            found.extend(files)
            extra_text = extra_text or text
            continue
        if (
            part is message
            and part.get_content_maintype() == "text"
            and not name
            and (part.get_content_disposition() != "attachment")
        ):
            continue  # a single-part text mail of another subtype: its text is the body
        found.append(MailAttachment(name, ctype, data))
    # Every name, from any source, made safe in one place; nameless parts get part-N.<ext>.
    return [
        MailAttachment(safe_filename(a.filename, a.content_type, n), a.content_type, a.data)
        for n, a in enumerate(found, 1)
    ], extra_text
