"""The parts of a parsed mail that later steps pay for by the character, cut to their bound.

Each cut is added to `notes`, which ingest() puts on the decision trace; the raw mail keeps it all.
"""

from __future__ import annotations

from mailgate.config import Parsing
from mailgate.ingest.text import html_to_text, repair_text


def subject(subject: str, bounds: Parsing, notes: list[str]) -> str:
    """The decoded subject, in at most parsing.max_subject_chars (it is every ticket list's line)."""
    if len(subject) > bounds.max_subject_chars:
        notes.append(
            f"subject of {len(subject)} characters: the first {bounds.max_subject_chars} kept "
            "(parsing.max_subject_chars)"
        )
        subject = subject[: bounds.max_subject_chars - 1].rstrip() + "…"
    return subject


def plain_text(bodies: list[str], bounds: Parsing, notes: list[str]) -> str:
    """The text parts, together at most parsing.max_text_chars: a ticket shows no more, and
    every later step (quotes, fingerprints, the database) pays for each character."""
    total, left, kept = sum(map(len, bodies)), bounds.max_text_chars, []
    for body in bodies:
        if left <= 0:
            break
        kept.append(repair_text(body[:left]))
        left -= len(kept[-1]) + 2
    if total > bounds.max_text_chars:
        notes.append(
            f"text of {total} characters: the first {bounds.max_text_chars} kept (parsing.max_text_chars); "
            f"the rest is in the raw mail"
        )
    return "\n\n".join(kept)


def html_text(bodies: list[str], bounds: Parsing, notes: list[str]) -> str:
    """The text of the HTML bodies; html2text takes seconds a megabyte, so only the first
    parsing.max_html_bytes are converted (cut before a tag)."""
    html = "\n".join(bodies)
    if len(html) > bounds.max_html_bytes:
        cut = html.rfind("<", 0, bounds.max_html_bytes)
        notes.append(
            f"HTML of {len(html)} characters: the text shows the first {bounds.max_html_bytes} "
            f"(parsing.max_html_bytes); the rest is in the raw mail"
        )
        html = html[: cut if cut > 0 else bounds.max_html_bytes]
    return html_to_text(html)
