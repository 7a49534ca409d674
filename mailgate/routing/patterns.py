"""The regular expressions an admin writes into the config, and bounded searches with them.

The `regex` module rather than `re`: its searches take a timeout. A pattern such as `(a+)+b`
backtracks exponentially on the right text, and the text is whatever a stranger mailed in; with
the timeout a search costs at most SEARCH_SECONDS, and a search that runs out counts as no match
(the trace says so). Case does not matter, as an admin writing `printer` expects.
"""

from __future__ import annotations

from functools import lru_cache

import regex

# Per search; a rule has at most a subject and a body pattern, so a mail costs a few of these.
SEARCH_SECONDS = 0.05
# The body a pattern is searched in: the start of the mail's text. A request says what it is
# about near the top, and a hostile mail of megabytes costs no more than a short one.
BODY_PREFIX_CHARS = 20_000


def check_pattern(value: str) -> str:
    """A pydantic validator: `value` compiles, else the error says where it breaks."""
    try:
        compiled(value)
    except regex.error as exc:
        raise ValueError(f"a regular expression ({exc})") from None
    return value


@lru_cache(maxsize=256)
def compiled(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern, regex.IGNORECASE | regex.V0)


class TimedOut(Exception):
    """A search ran out of time: the pattern backtracks too much on this text."""


def search(pattern: str, text: str) -> regex.Match[str] | None:
    try:
        return compiled(pattern).search(text, timeout=SEARCH_SECONDS)
    except TimeoutError:
        raise TimedOut(pattern) from None
