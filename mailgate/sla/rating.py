"""The rating a requester gives a closed ticket, as they write it: "#rate 4", "4", "5 stars",
"good", "sehr gut". Pure: no I/O. Storing it from a reply: ingest/rate.py."""

from __future__ import annotations

import re

# Words as people answer "how did we do?", in the shipped languages.
_WORDS = {
    "excellent": 5, "great": 5, "perfect": 5, "very good": 5, "sehr gut": 5, "super": 5, "ausgezeichnet": 5,
    "good": 4, "gut": 4, "fine": 4,
    "ok": 3, "okay": 3, "average": 3, "mittel": 3, "befriedigend": 3, "geht so": 3,
    "poor": 2, "bad": 2, "schlecht": 2, "not good": 2, "nicht gut": 2,
    "very bad": 1, "terrible": 1, "awful": 1, "sehr schlecht": 1, "miserabel": 1,
}  # fmt: skip
_COMMAND = re.compile(r"#\s*rate\s*:?\s*(\S+)", re.IGNORECASE)
_DIGIT = re.compile(r"([1-5])(?:\s*(?:/\s*5|stars?|sterne?|von 5|of 5))?[.!]?")
# Only the first lines count: a digit in the quoted mail below is no rating.
_LINES = 3


def parse_rating(text: str) -> int | None:
    """1 to 5, or None when the text gives no rating."""
    if not text:
        return None
    command = _COMMAND.search(text[:2000])
    if command is not None:
        found = _DIGIT.fullmatch(command.group(1))
        return int(found.group(1)) if found else None
    for line in text[:2000].splitlines()[:_LINES]:
        line = line.strip().lower().rstrip(".!")
        if not line or line.startswith(">"):
            continue
        found = _DIGIT.fullmatch(line)
        if found:
            return int(found.group(1))
        if line in _WORDS:
            return _WORDS[line]
        return None
    return None


def split_rating(text: str) -> tuple[int | None, str]:
    """The rating and what else the text says: a reply of a rating alone (rest "") asks for
    nothing more; "4, but the printer jams again" is a reply that also rates. Quoted lines are
    no text of the sender's."""
    rating = parse_rating(text)
    if rating is None:
        return None, text.strip()
    command = _COMMAND.search(text[:2000])
    if command is not None:
        lines = (text[: command.start()] + text[command.end() :]).splitlines()
    else:
        lines = text.splitlines()
        given = next(i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith(">"))
        del lines[given]
    rest = [line for line in lines if not line.strip().startswith(">")]
    return rating, "\n".join(rest).strip()
