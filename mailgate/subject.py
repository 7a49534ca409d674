"""Subject tags: `[HD #123]` in, tolerant of what mail clients do to subjects on the way back."""

from __future__ import annotations

import re
from functools import lru_cache

# Reply/forward prefixes of common clients and languages: Re, AW, WG, Fwd, SV, VS, Antw, TR, RV, Doorst …
_PREFIX = r"(?:re|aw|wg|fw|fwd|sv|vs|antw|antwort|tr|rv|ref|odp|vb|res|enc|doorst|r|i)"
_PREFIXES_RE = re.compile(rf"^\s*(?:{_PREFIX}\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+", re.IGNORECASE)


@lru_cache(maxsize=32)
def _tag_re(prefix: str) -> re.Pattern[str]:
    # Tolerate mangled spacing and case: "[HD #12]", "[hd#12]", "[ HD # 12 ]", "[HD 12]".
    return re.compile(rf"\[\s*{re.escape(prefix)}\s*#?\s*(\d{{1,12}})\s*\]", re.IGNORECASE)


def format_tag(prefix: str, number: int) -> str:
    return f"[{prefix} #{number}]"


def find_tag(prefix: str, subject: str) -> int | None:
    """The ticket number in the first tag of `subject`, if any."""
    match = _tag_re(prefix).search(subject or "")
    return int(match.group(1)) if match else None


def strip_prefixes(subject: str) -> str:
    """'Re: AW: Fwd: printer' -> 'printer'."""
    return _PREFIXES_RE.sub("", subject or "").strip()


def clean_subject(prefix: str, subject: str) -> str:
    """The subject as a ticket title: no reply prefixes, no tag, collapsed whitespace."""
    without_tag = _tag_re(prefix).sub(" ", strip_prefixes(subject))
    return " ".join(strip_prefixes(without_tag).split())


def tagged_subject(prefix: str, number: int, title: str) -> str:
    return f"{format_tag(prefix, number)} {title}".strip()
