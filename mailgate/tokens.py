"""Signed reply tokens: which ticket (and which person) a reply belongs to, unforgeable.

A token travels in a plus address (support+<token>@example.com) and inside the Message-IDs of
mail we send, which come back in In-Reply-To/References even where plus addresses are stripped.
It is lowercase base32 so that case-folding MTAs keep it valid.

A token may carry a generation (12-5r1-…): a staff member's token that was shown to others is
replaced by the next generation (mailgate/exposure.py), and only the current generation proves
anyone. The generation is signed with the rest, so the listener, which knows no database, still
accepts every token we ever issued as a recipient. Generation 0 is written and signed as
before generations existed: every token issued earlier stays valid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

_MAC_CHARS = 16  # 80 bits of HMAC-SHA256: not guessable by mailing at us
TOKEN_RE = re.compile(r"(?<![0-9a-z])(\d{1,12})-(\d{1,12})(?:r(\d{1,9}))?-([a-z2-7]{16})(?![a-z2-7])")


@dataclass(frozen=True)
class ReplyToken:
    ticket_number: int
    person_id: int
    generation: int = 0


def _mac(secret: bytes, ticket_number: int, person_id: int, generation: int) -> str:
    signed = f"reply:{ticket_number}:{person_id}" + (f":{generation}" if generation else "")
    digest = hmac.new(secret, signed.encode(), hashlib.sha256)
    return base64.b32encode(digest.digest()).decode().lower()[:_MAC_CHARS]


def make_token(secret: bytes, ticket_number: int, person_id: int, generation: int = 0) -> str:
    mark = f"r{generation}" if generation else ""
    return f"{ticket_number}-{person_id}{mark}-{_mac(secret, ticket_number, person_id, generation)}"


def find_tokens(text: str) -> list[str]:
    """Every token-shaped string in `text` (an address or a Message-ID), unverified."""
    return [m.group(0) for m in TOKEN_RE.finditer(text.lower())]


def verify(secret: bytes, token: str) -> ReplyToken | None:
    """The ticket and person a token names, or None if it was not signed with `secret`."""
    match = TOKEN_RE.fullmatch(token.lower())
    if not match:
        return None
    number, person, mac = int(match.group(1)), int(match.group(2)), match.group(4)
    generation = int(match.group(3) or 0)
    if not hmac.compare_digest(mac, _mac(secret, number, person, generation)):
        return None
    return ReplyToken(number, person, generation)


def plus_address(address: str, token: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local}+{token}@{domain}"


def message_id(token: str, purpose: str, domain: str) -> str:
    """A stable Message-ID for one outgoing mail: the same occasion always gets the same ID."""
    return f"<{token}.{purpose}@{domain}>"
