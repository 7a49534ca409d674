"""Attachments: found in the MIME tree with their exact bytes, unpacked from Outlook's winmail.dat
(TNEF, via tnefparse), and kept content-addressed (by SHA-256) under the data directory."""

from __future__ import annotations

import binascii
import logging
from dataclasses import dataclass
from email.message import Message

from tnefparse import TNEF

from mailgate.ingest.text import decode_words, html_to_text, repair_text

log = logging.getLogger(__name__)

_TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}


@dataclass(frozen=True)
class MailAttachment:
    filename: str
    content_type: str
    data: bytes


def _filename(part: Message) -> str:
    name = part.get_filename() or part.get_param("name") or ""
    if isinstance(name, tuple):  # an RFC 2231 value that email could not decode
        name = name[2] if len(name) > 2 else ""
    name = repair_text(str(name))
    if "=?" in name:  # RFC 2047 words in a parameter: not allowed, but what Outlook sends
        name = decode_words(name)
    return " ".join(name.split()).replace("/", "_").replace("\\", "_")


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
    files = [
        MailAttachment(
            repair_text(a.long_filename() or a.name or "attachment").strip("\x00 "),
            "application/octet-stream",
            a.data,
        )
        for a in tnef.attachments
    ]
    text = ""
    if tnef.htmlbody:
        html = tnef.htmlbody
        text = html_to_text(html.decode("utf-8", "replace") if isinstance(html, bytes) else html)
    elif tnef.body:
        body = tnef.body
        text = repair_text(body.decode("cp1252", "replace") if isinstance(body, bytes) else body)
    return files, text


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
        ctype = part.get_content_type()[:200]
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
        found.append(MailAttachment(name or f"part-{len(found) + 1}", ctype, data))
    return found, extra_text
