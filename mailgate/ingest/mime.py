"""Raw bytes -> the MIME tree that parsing works on, at a bounded cost whatever the mail.

The stdlib parser builds every part of a mail before anyone can look at it (100,000 tiny parts
cost minutes and half a gigabyte), and mail-parser then decodes every header value with the
stdlib's `decode_header`, which is quadratic in the encoded words of one value. So the tree is
built here, by the stdlib's own feed parser fed in chunks, with two of its public hooks:

- the message factory counts parts, and feeding stops once `parsing.max_mime_parts` are read;
- a Compat32 policy cuts each header value as it is read: to `parsing.max_header_bytes` (the
  address headers, which mail-parser reads with a linear parser of its own, are exempt), and all
  of them together to `parsing.max_header_total_bytes`, after which feeding stops too.

The raw mail is stored whole: what is cut is only missing from the parsed view (text, headers,
attachments), and `notes` say what, for the decision trace.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.message import Message
from email.policy import Compat32

from mailgate.config import Parsing

# mail-parser parses these with its own address parser (linear in the addresses); a long To or
# Cc is a real mail's, so only the total budget bounds them.
ADDRESS_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "sender", "reply-to", "resent-from", "resent-to", "resent-cc", "resent-bcc"}
)
# Headers listing the oldest first (RFC 5322 3.6.4): the newest, the end, is what threads.
KEEP_TAIL = frozenset({"references"})
# What a header costs beyond its text (a tuple, a lookup in every scan of the headers): a
# million empty headers must not be free.
HEADER_OVERHEAD = 64
CHUNK = 64 * 1024


@dataclass
class _Budget:
    """What has been read of one mail, and what was cut."""

    max_value: int
    remaining: int
    parts: int = 0
    cut: list[tuple[str, int, int]] = field(default_factory=list)  # (name, size, kept)
    cut_count: int = 0

    def take(self, name: str, value: str) -> str:
        lower = name.lower()
        limit = self.remaining if lower in ADDRESS_HEADERS else min(self.max_value, self.remaining)
        kept = value if len(value) <= limit else _cut(value, limit, keep_tail=lower in KEEP_TAIL)
        self.remaining = max(0, self.remaining - len(kept) - len(name) - HEADER_OVERHEAD)
        if len(kept) < len(value):
            self.cut_count += 1
            if len(self.cut) < 3:
                self.cut.append((name, len(value), len(kept)))
        return kept


def _cut(value: str, limit: int, *, keep_tail: bool) -> str:
    """At most `limit` characters of `value`, cut at a space so no word (an encoded word, a
    Message-ID) is broken, unless the only space is far from the limit."""
    if limit <= 0:
        return ""
    if keep_tail:
        start = len(value) - limit
        space = value.find(" ", start)
        return value[space + 1 if 0 <= space < start + limit // 2 else start :]
    space = value.rfind(" ", 0, limit + 1)
    return value[: space if space > limit // 2 else limit].rstrip()


class _BoundedPolicy(Compat32):
    """compat32 (what email.message_from_bytes uses) with each header value charged to a budget."""

    budget: _Budget | None = None

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        if self.budget is None:
            return name, value
        return name, self.budget.take(name, value)


@dataclass
class Tree:
    message: Message
    notes: list[str]


def read_tree(data: bytes, bounds: Parsing) -> Tree:
    """The MIME tree of `data`, read up to the bounds; `notes` say what was left out."""
    notes = []
    data, cut_at = _cut_header_section(data, bounds.max_header_total_bytes)
    if cut_at is not None:
        notes.append(
            f"a header section of {cut_at} bytes: read up to parsing.max_header_total_bytes, the rest kept "
            f"only in the raw mail"
        )
    data, cut_parts = _cut_part_header_sections(data, bounds.max_header_total_bytes)
    if cut_parts:
        notes.append(
            f"{cut_parts} MIME part header sections over parsing.max_header_total_bytes: cut, the rest kept "
            f"only in the raw mail"
        )
    budget = _Budget(bounds.max_header_bytes, bounds.max_header_total_bytes)
    policy = _BoundedPolicy(budget=budget)

    def factory(policy: Compat32 = policy) -> Message:
        budget.parts += 1
        return Message(policy)

    parser = BytesFeedParser(_factory=factory, policy=policy)
    budget.parts = 0  # the parser calls the factory once to learn its signature
    stopped_at = None
    for offset in range(0, len(data), CHUNK):
        parser.feed(data[offset : offset + CHUNK])
        if budget.parts > bounds.max_mime_parts or budget.remaining == 0:
            stopped_at = offset + CHUNK
            break
    message = parser.close()
    if budget.parts > bounds.max_mime_parts:
        _keep_parts(message, bounds.max_mime_parts)
        notes.append(
            f"more than {bounds.max_mime_parts} MIME parts: the first {bounds.max_mime_parts} read, "
            f"the rest kept only in the raw mail (parsing.max_mime_parts)"
        )
    elif stopped_at is not None and stopped_at < len(data):
        notes.append(
            f"headers over {bounds.max_header_total_bytes} bytes in all: read up to byte {stopped_at} of "
            f"{len(data)}, the rest kept only in the raw mail (parsing.max_header_total_bytes)"
        )
    if budget.cut_count:
        shown = ", ".join(f"{name} ({size} bytes, {kept} read)" for name, size, kept in budget.cut)
        more = f" and {budget.cut_count - len(budget.cut)} more" if budget.cut_count > len(budget.cut) else ""
        notes.append(f"header values cut: {shown}{more} (parsing.max_header_bytes, parsing.max_header_total_bytes)")
    return Tree(message, notes)


_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"\n(?=[^ \t])")


def _cut_header_section(data: bytes, limit: int) -> tuple[bytes, int | None]:
    """`data` with its header section cut where its fields would cost more than `limit`
    (HEADER_OVERHEAD each) or its bytes four times that, and that section's size if it was cut.

    The stdlib parser holds every line of a header section until the section ends, so the
    budget above cannot stop a mail of two million header fields: its header section is cut
    here, at the start of a field, and the body follows as it was. A few long values are left
    to the budget, which keeps the fields after them.
    """
    end = _BLANK_LINE.search(data)
    size = end.start() if end else len(data)
    if size <= limit // HEADER_OVERHEAD:
        return data, None  # too short to be over, however many fields
    cut = None
    for count, field_start in enumerate(_FIELD_START.finditer(data, 0, min(size, 4 * limit)), start=1):
        if count * HEADER_OVERHEAD > limit:
            cut = field_start.start()
            break
    if cut is None:
        if size <= 4 * limit:
            return data, None
        cut = 4 * limit
    # The kept part ends with a line end, so the blank line's first one is not needed again.
    tail = data[end.start() :] if end else b""
    tail = tail[2:] if tail.startswith(b"\r\n") else tail[1:]
    return data[: cut + 1] + tail, size


# A line that may open a MIME part (a boundary, RFC 2046 5.1.1), followed by a header field.
_PART_START = re.compile(rb"\n--[^\r\n]{1,200}\r?\n(?=[!-9;-~]+[ \t]*:)")


def _cut_part_header_sections(data: bytes, limit: int) -> tuple[bytes, int]:
    """`data` with every part's header section cut as the top one is (see above), and how many
    were. The stdlib holds a part's header lines until its blank line just as it does the top
    section's, so one part of ten million short fields cost 1.5 GB. A section starts after any
    line that looks like a boundary: the parser's own idea of the boundaries is not known yet,
    and only a section of thousands of fields is ever cut. One pass: each blank line is looked
    for once, however many parts."""
    small = limit // HEADER_OVERHEAD
    if len(data) <= small:
        return data, 0
    pieces, kept_to, cut = [], 0, 0
    blank = _BLANK_LINE.search(data)
    for found in _PART_START.finditer(data):
        begin = found.end()
        if begin < kept_to:
            continue
        if blank is not None and blank.start() < begin:
            blank = _BLANK_LINE.search(data, begin)
        stop = blank.start() if blank is not None else len(data)
        if stop - begin <= small:
            continue
        section, was = _cut_header_section(data[begin:stop], limit)
        if was is None:
            continue
        pieces += [data[kept_to:begin], section.rstrip(b"\r\n") + b"\r\n"]
        # Go on from the blank line, without the line end the kept fields already end with.
        kept_to = stop + (2 if data.startswith(b"\r\n", stop) else 1) if blank is not None else stop
        cut += 1
    if not cut:
        return data, 0
    pieces.append(data[kept_to:])
    return b"".join(pieces), cut


def _keep_parts(message: Message, count: int) -> None:
    """Drop every part after the first `count` (in the order a reader meets them)."""
    parts = list(itertools.islice(message.walk(), count))
    kept = {id(part) for part in parts}
    for part in parts:
        if part.is_multipart():
            children = part.get_payload()
            if any(id(child) not in kept for child in children):
                part.set_payload([child for child in children if id(child) in kept])
