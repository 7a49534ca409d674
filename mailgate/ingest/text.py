"""Readable text: HTML to text, repair of mis-decoded bytes, and the new part of a reply."""

from __future__ import annotations

import email.errors
import email.header
import re

import html2text

_SURROGATES = re.compile(r"[\udc80-\udcff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n{3,}")


def repair_text(text: str) -> str:
    """Undo what a wrong or missing charset did, and drop characters no database column takes.

    Undecodable bytes arrive as surrogate escapes (8-bit headers, bodies declared with the wrong
    charset); they are re-read as UTF-8, or else as Windows-1252, the usual real charset.
    """
    if _SURROGATES.search(text):
        data = text.encode("utf-8", "surrogateescape")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", "replace")
    # NUL and other C0 controls: PostgreSQL refuses NUL in text, and none of them is readable.
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words ("=?utf-8?q?…?="); unknown charsets fall back to UTF-8/1252."""
    text = " ".join(text.split())
    if "=?" not in text:
        return text
    out = []
    try:
        parts = email.header.decode_header(text)
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return text
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        try:
            out.append(chunk.decode(charset or "ascii"))
        except (LookupError, UnicodeDecodeError):
            out.append(repair_text(chunk.decode("ascii", "surrogateescape")))
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


# Attribution lines other languages put above a quote ("Am … schrieb:", "Le … a écrit :");
# the reply parser knows only the English form and leaves these at the end of the new text.
_ATTRIBUTION = re.compile(
    r"^(on|am|le|el|il|op|em|den|dne|w dniu|в|пн|вт|ср|чт|пт|сб|вс)\b.{0,200}"
    r"(wrote|schrieb|a écrit|escribió|ha scritto|schreef|escreveu|skrev|napsal|napisał|написал\w*)\s*:\s*$",
    re.IGNORECASE | re.DOTALL,
)


# The line Gmail, Thunderbird or Apple Mail put above a forwarded mail.
_FORWARD_MARKER = re.compile(
    r"^\s*(-{3,}\s*(forwarded message|weitergeleitete nachricht|message transféré)\s*-{3,}|"
    r"begin forwarded message:)\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def extract_reply(text: str) -> str:
    """The newly written part of a reply: quoted history and signature removed.

    email_reply_parser (the GitHub/Zapier algorithm) scored best on the corpus' reply fixtures;
    when it finds nothing it is wrong (a forward, a reply below the quote), so the whole text
    is kept rather than losing what the person wrote.
    """
    from email_reply_parser import EmailReplyParser

    reply = EmailReplyParser.parse_reply(text).strip()
    if _FORWARD_MARKER.search(reply):
        return text  # a forward: what was forwarded is the content, keep it all
    paragraphs = reply.split("\n\n")
    if len(paragraphs) > 1 and _ATTRIBUTION.match(" ".join(paragraphs[-1].split())):
        reply = "\n\n".join(paragraphs[:-1]).strip()
    return reply or text
