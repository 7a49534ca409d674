"""The languages outgoing mail can be written in, and which one a person gets.

English is the templates' top level (templates/<occasion>/…); every other language is a folder
of the same layout (templates/de/<occasion>/…), shipped or in the site's templates_path, and a
template it lacks falls back to English. A person's language is, in order: the one the staff
list gives them, the one their request asked for (Content-Language or Accept-Language, as
Outlook and most webmail send), the desk's tickets.language. A requester's entry in the directory
(directory.csv, [[requesters]]) counts like a staff member's.
"""

from __future__ import annotations

import functools
import re
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING

from mailgate.resources import templates_dir

if TYPE_CHECKING:
    from mailgate.config import Settings

DEFAULT = "en"
_CODE = re.compile(r"[a-z]{2}")  # ISO 639-1; occasions (ack, …) are longer names


@functools.lru_cache(maxsize=16)
def available(site_dir: Path | None = None) -> frozenset[str]:
    """English, and each language with a folder of templates, shipped or the site's. Read once
    per folder: every acknowledgement asks, and a new language needs a restart anyway (the
    config check at start reads it too)."""
    found = {DEFAULT}
    for root in (templates_dir(), site_dir):
        if root is not None and root.is_dir():
            found.update(
                p.name
                for p in root.iterdir()
                if p.is_dir() and _CODE.fullmatch(p.name) and not (p / "body.txt").exists()
            )
    return frozenset(found)


def requested(message: Message, choices: frozenset[str]) -> str | None:
    """The first language among `choices` that the mail's Content-Language or Accept-Language
    names ("de-DE", "de, en;q=0.8"), or None."""
    for header in ("Content-Language", "Accept-Language"):
        for tag in str(message.get(header, "") or "").split(","):
            language, _, params = tag.partition(";")
            if re.fullmatch(r"\s*q\s*=\s*0(\.0*)?\s*", params):
                continue  # "de;q=0": not German
            primary = language.strip().lower().split("-")[0]
            if primary in choices:
                return primary
    return None


def language_of(settings: Settings, address: str, request: Message | None = None) -> str:
    """The language to write to `address` in; `request`: the mail being answered, if any."""
    member = next((m for m in (*settings.staff, *settings.requesters) if m.address == address), None)
    if member is not None and member.language:
        return member.language
    if request is not None:
        asked = requested(request, available(settings.templates_path))
        if asked is not None:
            return asked
    return settings.tickets.language
