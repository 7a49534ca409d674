"""Readable text: HTML to text and repair of mis-decoded bytes (the new part of a reply: quotes.py)."""

from __future__ import annotations

import email.errors
import re

import html2text

from mailgate.ingest.charsets import decode_bytes, decode_raw_8bit
from mailgate.ingest.encoded_words import split_words

_SURROGATES = re.compile(r"[\udc80-\udcff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n{3,}")


def repair_text(text: str, charset: str | None = None) -> str:
    """Undo what a wrong or missing charset did, and drop characters no database column takes.

    Undecodable bytes arrive as surrogate escapes (8-bit headers and parameters); they are
    re-read as UTF-8, else in `charset` (what the mail declares for its text), else as the
    detector in charsets.py finds.
    """
    if _SURROGATES.search(text):
        text = decode_raw_8bit(text.encode("utf-8", "surrogateescape"), charset)
    # NUL and other C0 controls: PostgreSQL refuses NUL in text, and none of them is readable.
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words ("=?utf-8?q?…?="); wrong or unknown charsets are repaired."""
    text = " ".join(text.split())
    if "=?" not in text:
        return text
    out = []
    try:
        parts = split_words(text)  # linear, where email.header.decode_header is quadratic
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return text
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        # Unencoded words come back from the stdlib as raw-unicode-escape bytes.
        out.append(decode_bytes(chunk, charset) if charset else chunk.decode("raw-unicode-escape", "replace"))
    return " ".join(repair_text("".join(out)).split())


def html_to_text(html: str) -> str:
    """An HTML body as plain text a person can read in a ticket or a mail."""
    if not html.strip():
        return ""
    converter = html2text.HTML2Text(bodywidth=0)
    converter.ignore_images = True
    converter.ignore_emphasis = True
    converter.unicode_snob = True
    converter.single_line_break = False
    text = converter.handle(repair_text(html))
    return _BLANK_RUNS.sub("\n\n", "\n".join(line.rstrip() for line in text.splitlines())).strip()
