"""Templates -> message: the text of outgoing mail, and a queued row rendered as bytes."""

from __future__ import annotations

import email.policy
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
from jinja2.bccache import Bucket

from mailgate.config import Settings
from mailgate.models import Outbox
from mailgate.resources import templates_dir
from mailgate.sla.policy import timezone
from mailgate.storage import AttachmentStore


class _CompiledOnce(jinja2.BytecodeCache):
    """Compiled templates shared by every Templates of this process. Each SLA scan builds a
    Templates of its own, and compiling a template takes about 10 ms of CPU (the acknowledgement
    and the dispatcher's notice: 40 ms for their four files). Jinja keys an entry by the file's
    name and checks a checksum of its source, so an edited site template is compiled anew.
    Every Templates uses the same Environment options, which the compiled code depends on."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_COMPILED = _CompiledOnce()


class Templates:
    """Templates named after the occasion: <name>/subject.txt and <name>/body.txt.

    A site directory, when given, is searched first so a site can reword any mail.
    """

    def __init__(self, site_dir: Path | None = None) -> None:
        paths = [str(p) for p in (site_dir, templates_dir()) if p is not None]
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(paths),
            bytecode_cache=_COMPILED,
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["size"] = human_size

    def render(self, name: str, context: dict[str, Any], language: str = "en") -> tuple[str, str]:
        """Subject and body of occasion `name` in `language` (<language>/<name>/…, the site's
        before the shipped), else in English."""

        def pick(part: str) -> jinja2.Template:
            names = [f"{name}/{part}"] if language == "en" else [f"{language}/{name}/{part}", f"{name}/{part}"]
            return self.env.select_template(names)

        subject = pick("subject.txt").render(context)
        body = pick("body.txt").render(context)
        return " ".join(subject.split()), body.rstrip() + "\n"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


# How a promise reads in each language (CLDR patterns, formatted by Babel: day and month names
# in the reader's language); other languages get Babel's own medium date and short time.
_WHEN = {"en": "EEEE dd MMMM HH:mm", "de": "EEEE, d. MMMM, HH:mm 'Uhr'"}


def local_time(settings: Settings, moment: datetime | None, language: str = "en") -> str:
    """'Tuesday 14 November 14:00 (Europe/Berlin)' — the way a person reads a promise, in their
    language and the zone of the business hours that made it (sla.policy.timezone): "by 12:30"
    means 12:30 of the opening hours the deadline was counted in."""
    if moment is None:
        return ""
    from babel import UnknownLocaleError
    from babel.dates import format_datetime

    zone = timezone(settings)
    local = moment.astimezone(zone)
    try:
        text = format_datetime(local, _WHEN.get(language, "medium"), tzinfo=zone, locale=language)
    except (UnknownLocaleError, ValueError):  # a site's folder named for no locale Babel knows
        text = format_datetime(local, _WHEN["en"], tzinfo=zone, locale="en")
    return f"{text} ({zone.key})"


# policy.SMTP writes CRLF line ends and RFC 2047 words for non-ASCII header text. With
# cte_type 7bit a non-ASCII body is sent quoted-printable or base64, never as 8bit: a relay that
# does not offer 8BITMIME still gets a valid mail, and no line reaches the 998-octet limit.
POLICY = email.policy.SMTP.clone(cte_type="7bit")


def message(row: Outbox, store: AttachmentStore | None = None) -> EmailMessage:
    """The queued row as a message: its headers in order, its body as UTF-8 text, and the
    files it carries from `store` (then multipart/mixed).

    Raises ValueError for a header value that cannot be a header (a line break in it), and
    for a file that is not in the store (or no store given); OSError when the store cannot be
    read.
    """
    msg = _build(row.headers, row.body)
    for attached in row.attachments or ():
        if store is None:
            raise ValueError("the mail carries files and no attachment store was given")
        try:
            data = store.get(attached["sha256"])
        except FileNotFoundError as exc:  # another error (a mount away) is the caller's to retry
            raise ValueError(f"attachment {attached['filename']!r} is not in the store") from exc
        maintype, _, subtype = str(attached["content_type"]).lower().partition("/")
        if maintype in ("message", "multipart", "") or not subtype:
            # A stored mail or a part of unusable type travels as a file: message/* may not be
            # base64-encoded, and 8bit is not what a relay without 8BITMIME takes.
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=attached["filename"] or "attachment")
    return msg


def _build(headers: dict[str, str], body: str) -> EmailMessage:
    msg = EmailMessage(policy=POLICY)
    for name, value in headers.items():
        msg[name] = str(value)
    msg.set_content(body, charset="utf-8")
    return msg


def shorten(text: str, max_chars: int) -> str:
    """`text` in at most `max_chars` characters, cut at a word and marked "…" when cut."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars - 1].rstrip() + "…"


# Encoded as sent, a body takes at most this many bytes a UTF-8 byte (base64, or quoted-printable
# when that is shorter, with its line ends), and headers this much beside it: below that, a mail
# needs no trial rendering to know it fits.
_ENCODED_PER_BYTE = 1.4
_HEADER_ROOM = 16 * 1024


def fit_body(headers: dict[str, str], body: str, max_bytes: int) -> str:
    """`body`, cut (and saying so) where the mail rendered with `headers` would exceed `max_bytes`.

    What an outgoing mail quotes of incoming mail is bounded where it is chosen, but a template
    can list any number of attachments, names and notes: this is the bound that always holds.
    """
    if len(body) * 4 * _ENCODED_PER_BYTE + _HEADER_ROOM <= max_bytes:
        return body  # even if every character took four bytes in UTF-8
    note = f"\n\n[… cut: this mail would have been longer than {max_bytes // 1024} KB]\n"
    if len(body) > max_bytes:  # one byte a character at least: no need to render it to know
        body = body[:max_bytes]
    while True:
        size = len(_build(headers, body).as_bytes())
        if size <= max_bytes:
            return body
        over = size - max_bytes + _HEADER_ROOM // 4
        keep = max(0, len(body) - int(over / _ENCODED_PER_BYTE) - len(note))
        body = body[:keep].rstrip() + note
        if keep == 0:
            return body


def render(row: Outbox, store: AttachmentStore | None = None) -> bytes:
    """The queued row as RFC 5322 bytes, ready for SMTP (its files read from `store`)."""
    return message(row, store).as_bytes()
