"""Templates -> message: the text of outgoing mail, and a queued row rendered as bytes."""

from __future__ import annotations

import email.policy
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

from mailgate.config import Settings
from mailgate.models import Outbox
from mailgate.resources import templates_dir


class Templates:
    """Templates named after the occasion: <name>/subject.txt and <name>/body.txt.

    A site directory, when given, is searched first so a site can reword any mail.
    """

    def __init__(self, site_dir: Path | None = None) -> None:
        paths = [str(p) for p in (site_dir, templates_dir()) if p is not None]
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(paths),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["size"] = human_size

    def render(self, name: str, context: dict[str, Any]) -> tuple[str, str]:
        subject = self.env.get_template(f"{name}/subject.txt").render(context)
        body = self.env.get_template(f"{name}/body.txt").render(context)
        return " ".join(subject.split()), body.rstrip() + "\n"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def local_time(settings: Settings, moment: datetime | None) -> str:
    """'Tuesday 14:00 (Europe/Berlin)' — the way a person reads a promise."""
    if moment is None:
        return ""
    zone = settings.tickets.timezone
    return f"{moment.astimezone(ZoneInfo(zone)):%A %d %B %H:%M} ({zone})"


# policy.SMTP writes CRLF line ends and RFC 2047 words for non-ASCII header text. With
# cte_type 7bit a non-ASCII body is sent quoted-printable or base64, never as 8bit: a relay that
# does not offer 8BITMIME still gets a valid mail, and no line reaches the 998-octet limit.
POLICY = email.policy.SMTP.clone(cte_type="7bit")


def message(row: Outbox) -> EmailMessage:
    """The queued row as a message: its headers in order, its body as UTF-8 text.

    Raises ValueError for a header value that cannot be a header (a line break in it).
    """
    msg = EmailMessage(policy=POLICY)
    for name, value in row.headers.items():
        msg[name] = str(value)
    msg.set_content(row.body, charset="utf-8")
    return msg


def render(row: Outbox) -> bytes:
    """The queued row as RFC 5322 bytes, ready for SMTP."""
    return message(row).as_bytes()
