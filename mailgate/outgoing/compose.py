"""Templates -> message: the text of outgoing mail, and a queued row rendered as bytes."""

from __future__ import annotations

import email.header
import quopri
from datetime import datetime
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


def _header(name: str, value: str) -> bytes:
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} contains a line break")
    if value.isascii() and len(value) < 900:
        return f"{name}: {value}\r\n".encode("ascii")
    # RFC 2047 words for non-ASCII text (addresses were encoded when queued), folded.
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


def render(row: Outbox) -> bytes:
    """The outbox row as RFC 5322 bytes, CRLF line ends.

    Written out directly: the stdlib's EmailMessage would parse every header again, which cost
    more than delivering the mail.
    """
    body = row.body.replace("\r\n", "\n").replace("\n", "\r\n")
    if body.isascii() and all(len(line) < 990 for line in body.split("\r\n")):
        encoding, payload = "7bit", body.encode("ascii")
    else:
        encoding = "quoted-printable"
        payload = quopri.encodestring(body.encode("utf-8")).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = b"".join(_header(name, str(value)) for name, value in row.headers.items())
    head += b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    head += f"Content-Transfer-Encoding: {encoding}\r\n".encode()
    return head + b"\r\n" + payload
