"""The text parts of a mail (what a ticket shows), decoded from their exact bytes by charsets.py.

The parts chosen are the ones mail-parser takes as body text (its `text_plain`/`text_html`):
text/plain and text/html leaves without a file name or an `attachment` disposition, plus named
`inline` ones outside an attached container. Decoding is ours: a missing, wrong or unknown
charset label is repaired instead of giving U+FFFD or mojibake.
"""

from __future__ import annotations

import re
from email.message import Message

from mailgate.ingest.charsets import decode_bytes

_BODY_TYPES = ("text/plain", "text/html")
# HTML's own declaration, for HTML parts whose MIME header names no charset (HTML's prescan).
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([\w.:-]+)", re.I)


def body_texts(message: Message) -> tuple[list[str], list[str]]:
    """The plain and the HTML text parts of `message`, in order, decoded."""
    plain: list[str] = []
    html: list[str] = []
    attached: set[int] = set()  # parts inside a container that is itself an attachment
    for part in message.walk():
        inside = id(part) in attached
        if part.is_multipart():
            disposition = part.get_content_disposition()
            if inside or disposition not in (None, "inline") or (disposition is None and part.get_filename()):
                attached.update(id(p) for p in part.get_payload() if isinstance(p, Message))
            continue
        ctype = part.get_content_type()
        if ctype not in _BODY_TYPES:
            continue
        disposition = part.get_content_disposition()
        named = bool(part.get_filename())
        if named and (inside or disposition != "inline"):
            continue  # a text file, stored as an attachment
        if not named and disposition == "attachment":
            continue
        text = part_text(part)
        if text:
            (html if ctype == "text/html" else plain).append(text)
    return plain, html


def part_text(part: Message) -> str:
    """A leaf part's payload as text, read with its declared charset where that is right."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    label = part.get_content_charset()
    if label is None and part.get_content_type() == "text/html":
        found = _META_CHARSET.search(data[:2048])
        label = found.group(1).decode("ascii") if found else None
    return decode_bytes(data, label)
