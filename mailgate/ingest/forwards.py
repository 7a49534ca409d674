"""A forwarded mail inside a mail: who wrote the original, to whom, its subject and its text.

Pure: a parsed mail in, the original out (no database, no config). Two ways a client forwards:
- inline, below a line or a header block of its own: Gmail "---------- Forwarded message
  ---------", Thunderbird "-------- Forwarded Message --------" (in HTML a header table), Apple
  Mail "Begin forwarded message:", Outlook "-----Original Message-----" or a bare "From: … Sent: …
  To: … Subject:" block, and the same in other languages ("Weitergeleitete Nachricht",
  "Ursprüngliche Nachricht", "Von: … Gesendet: … An: … Betreff:"); HTML-only mail is read in its
  text form (ingest/text.py), whose markdown links, escapes and table bars are undone here;
- attached whole as message/rfc822 (Outlook's and Thunderbird's "forward as attachment"): the
  original's own headers, text and files.
Outlook writes its separator and header block above a *reply's* quote as well, so those two
shapes are not `explicit`: the caller decides by the subject (see is_reply_subject).
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import Message

from mailgate.config import Parsing
from mailgate.ingest.attachments import MailAttachment
from mailgate.ingest.body import part_text
from mailgate.ingest.parse import MAX_ADDRESS_CHARS, MAX_NAME_CHARS, ParsedMail, parse
from mailgate.ingest.text import html_to_text, repair_text


@dataclass(frozen=True)
class Forward:
    shape: str  # which client's shape it was found in, for the trace
    explicit: bool  # the mail says it forwards (a marker or an attachment), not just quotes
    from_name: str
    from_addr: str  # lowercased; "" when the forward names no address (Outlook may give a name only)
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    subject: str
    date: str  # as the forward wrote it
    text: str  # the original's text
    note: str  # what the forwarder wrote above it
    # Attached: the original as parsed, and the mail to store as the first message (the
    # original's headers, text and files, the forwarder's note above its text).
    original: ParsedMail | None = None
    content: ParsedMail | None = None


# Header lines of a forwarded block, in the languages clients write them, by what they mean.
_KEYS = {
    "from": ("from", "von", "de", "van", "da", "od", "от", "от кого", "från", "fra", "feladó", "lähettäjä"),
    "date": (
        "date", "sent", "datum", "gesendet", "envoyé", "enviado", "fecha", "verzonden", "wysłano",
        "data", "дата", "отправлено", "skickat", "sendt", "inviato", "dátum", "lähetetty",
    ),
    "to": ("to", "an", "à", "a", "para", "aan", "do", "кому", "till", "til", "címzett", "vastaanottaja"),
    "cc": ("cc", "kopie", "kopie an", "copie", "copia", "kopia", "копия", "másolat"),
    "subject": (
        "subject", "betreff", "objet", "asunto", "onderwerp", "oggetto", "temat", "тема", "ämne",
        "emne", "tárgy", "assunto", "aihe",
    ),
    "reply-to": ("reply-to", "antwort an", "répondre à"),
}  # fmt: skip
_MEANING = {word: meaning for meaning, words in _KEYS.items() for word in words}

# A marker line above a forwarded block; html2text escapes leading dashes ("\---") and Apple Mail
# quotes the whole forward ("> Begin forwarded message:").
_EXPLICIT = re.compile(
    r"^[ \t>]*\\?-{3,}[ \t]*(forwarded message|weitergeleitete nachricht|message transféré|mensaje reenviado|"
    r"doorgestuurd bericht|messaggio inoltrato|wiadomość przekazana|vidarebefordrat meddelande|"
    r"videresendt meddelelse|пересылаемое сообщение|mensagem encaminhada)[ \t]*-{3,}"
    r"|^[ \t>]*(begin forwarded message|anfang der weitergeleiteten nachricht|début du message réexpédié)[ \t]*:",
    re.I | re.M,
)
_ORIGINAL = re.compile(
    r"^[ \t>]*\\?-{2,}[ \t]*(original message|ursprüngliche nachricht|message d'origine|mensaje original|"
    r"oorspronkelijk bericht|messaggio originale|wiadomość oryginalna|originalmeddelande|исходное сообщение)"
    r"[ \t]*-{2,}|^[ \t]*_{10,}[ \t]*$",
    re.I | re.M,
)
# The first line of a bare header block: "From: …" (or "Von: …"), maybe bold, maybe quoted.
_FROM_LINE = re.compile(rf"^[ \t>]*\**({'|'.join(map(re.escape, _KEYS['from']))})\**[ \t]*:", re.I | re.M)
_HEADER = re.compile(r"^\**([^\W\d_][\w .'-]{0,20}?)\**[ \t]*:\**[ \t]*(?:\|[ \t]*)?(.*)$")
_TABLE_RULE = re.compile(r"^[ \t]*[-|: ]*\|[-|: ]*$")  # "---|---" of a converted header table
_QUOTE = re.compile(r"^[ \t]*> ?")
_QUOTED_LINES = re.compile(r"^[ \t]*> ?", re.M)
_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"']+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_MAILTO = re.compile(r"\[mailto:([^\]\s]+)\]", re.I)  # Outlook: "Dana Smith [mailto:dana@example.com]"
_LINK = re.compile(r"\[([^\]\n]*)\]\((?:mailto:)?[^)\s]*\)", re.I)  # html2text: [text](mailto:…)
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_REPLY_PREFIX = re.compile(
    r"^\s*(re|aw|sv|antw|antwort|odp|res|r|atb|ynt|回复|答复)\s*(\[\d+\]|\(\d+\))?\s*[:：]", re.I
)

MAX_HEADER_LINES = 30  # a forwarded block's header lines read, continuation lines included
MAX_CANDIDATES = 20  # bare "From:" lines tried as a header block: a hostile text may hold thousands
MAX_ADDRESSES = 200  # addresses read from one To or Cc line of a forwarded block
MAX_VALUE_CHARS = 20_000  # of a forwarded header line: room for MAX_ADDRESSES, not for a megabyte
MAX_ATTACHED = 5  # message/rfc822 attachments tried for the original


def is_reply_subject(subject: str) -> bool:
    """ "Re: …", "AW: …": a reply, whose quote Outlook heads the way it heads a forward."""
    return bool(_REPLY_PREFIX.match(subject or ""))


def find_forward(mail: ParsedMail, max_bytes: int, bounds: Parsing) -> Forward | None:
    """The original a mail forwards, if it names its sender's address: inline in the mail's own
    text first (a Gmail forward may carry an .eml of its own), else attached."""
    rfc822 = [n for n, a in enumerate(mail.attachments) if a.content_type == "message/rfc822"]
    # With an attached mail, its text may be inline in the body: look only at the forwarder's own.
    text = own_text(mail.message, bounds.max_text_chars) if rfc822 else mail.text
    inline = find_inline(text)
    if inline is not None and inline.from_addr:
        return inline
    for index in rfc822[:MAX_ATTACHED]:
        attached = read_attached(mail, index, text, max_bytes, bounds)
        if attached is not None:
            return attached
    return None


def find_inline(text: str) -> Forward | None:
    """The first forwarded block in `text` (its original's From may be without an address)."""
    text = text.replace("\r\n", "\n")
    candidates: list[tuple[int, int, str, bool]] = []  # (block start, headers start, shape, explicit)
    for pattern, explicit in ((_EXPLICIT, True), (_ORIGINAL, False)):
        if found := pattern.search(text):
            candidates.append((found.start(), found.end(), _shape(found.group(0)), explicit))
    first_marker = min((start for start, *_ in candidates), default=len(text))
    for n, found in enumerate(_FROM_LINE.finditer(text, 0, first_marker)):
        if n >= MAX_CANDIDATES:
            break
        candidates.append((found.start(), found.start(), "header block", False))
    for start, headers_at, shape, explicit in sorted(candidates):
        block = _read_block(text, headers_at, bare=shape == "header block")
        if block is None:
            continue
        headers, body = block
        sender = _addresses(headers.get("from", ""))
        name, address = sender[0] if sender else (_clean(headers.get("from", "")), "")
        return Forward(
            shape=shape,
            explicit=explicit,
            from_name=name,
            from_addr=address,
            to=_addresses(headers.get("to", "")),
            cc=_addresses(headers.get("cc", "")),
            subject=_clean(headers.get("subject", "")),
            date=_clean(headers.get("date", "")),
            text=body,
            note=text[:start].strip(),
        )
    return None


def _shape(marker: str) -> str:
    words = " ".join(re.sub(r"[\\>:_-]", " ", marker).split())
    return f"'{words}'" if words else "a line of underscores"


def _read_block(text: str, at: int, *, bare: bool) -> tuple[dict[str, str], str] | None:
    """The header lines from `at` on (meaning -> value) and the text below them; None when there
    is no From line among them, or (`bare`: a block with no marker above it) no date line.
    Apple Mail quotes what it forwards ("> "): then one level of quoting is taken off the text."""
    # The header lines, and the rest of the text in one piece: a block is tried for each
    # candidate, and splitting a long text into all its lines each time would cost its length.
    lines = text[at:].split("\n", MAX_HEADER_LINES + 1)
    headers: dict[str, str] = {}
    last = ""  # the meaning of the header line before, while a continuation may follow
    body_at = len(lines)
    quoted = False
    for n, raw in enumerate(lines):
        if n > MAX_HEADER_LINES:
            return None
        line = _QUOTE.sub("", raw, count=1).strip()
        if not line or _TABLE_RULE.match(line):
            last = ""
            if headers and not _next_is_header([piece.partition("\n")[0] for piece in lines[n + 1 : n + 8]]):
                body_at = n + 1
                break
            continue
        found = _HEADER.match(line)
        meaning = _MEANING.get(" ".join(found.group(1).lower().split())) if found else None
        if found and meaning:
            quoted = quoted or bool(_QUOTE.match(raw))
            if meaning not in headers:
                headers[meaning] = found.group(2).strip()
            last = meaning
        elif last in ("to", "cc", "subject"):
            headers[last] += " " + line  # Gmail and Outlook wrap a long subject or list
        elif headers:
            body_at = n  # the original's text starts without a blank line before it
            break
        elif n > 0:
            return None  # a marker, then no headers: not a forwarded block
    if "from" not in headers or (bare and "date" not in headers):
        return None
    body = "\n".join(lines[body_at:])
    if quoted:
        body = _QUOTED_LINES.sub("", body)
    return {k: v[:MAX_VALUE_CHARS] for k, v in headers.items()}, body.strip()


def _next_is_header(lines: list[str]) -> bool:
    """After a blank line: do the header lines go on (Apple Mail's HTML parts them with blanks)?"""
    for line in lines:
        line = _QUOTE.sub("", line, count=1).strip()
        if not line or _TABLE_RULE.match(line):
            continue
        found = _HEADER.match(line)
        return bool(found and _MEANING.get(" ".join(found.group(1).lower().split())))
    return False


def _clean(value: str) -> str:
    """A header value as a person wrote it: no markdown links, escapes or controls, one line."""
    value = _MAILTO.sub(r"<\1>", value)
    value = _LINK.sub(r"\1", value)
    value = _ESCAPE.sub(r"\1", value)
    return " ".join(_CONTROLS.sub(" ", repair_text(value)).split())


def _addresses(value: str) -> list[tuple[str, str]]:
    """(name, address) pairs of a forwarded To/Cc/From line, however the client wrote it:
    "Dana <dana@x>", "Dana [mailto:dana@x]", "Dana (dana@x)", "a@x; b@y"."""
    value = _clean(value)
    pairs = []
    for name, address in email.utils.getaddresses([value.replace(";", ",")])[:MAX_ADDRESSES]:
        address = address.strip().lower()
        if _ADDRESS.fullmatch(address) and len(address) <= MAX_ADDRESS_CHARS:
            pairs.append((name.strip(" \"'")[:MAX_NAME_CHARS], address))
    written = [a.lower() for a in _ADDRESS.findall(value)[:MAX_ADDRESSES]]
    if len(pairs) < len(written):  # getaddresses misread a form ("Dana (dana@x)"): the addresses alone
        named = dict((a, n) for n, a in pairs)
        pairs = [(named.get(a, ""), a) for a in dict.fromkeys(written) if len(a) <= MAX_ADDRESS_CHARS]
    return pairs


def own_text(message: Message, max_chars: int) -> str:
    """The text the forwarder wrote: the mail's text parts outside any attached mail."""
    plain: list[str] = []
    html: list[str] = []
    skip: set[int] = set()
    for part in message.walk():
        if id(part) in skip:
            continue
        if part.get_content_type() == "message/rfc822" and part is not message:
            skip.update(id(p) for p in part.walk())
            continue
        if part.is_multipart() or part.get_content_type() not in ("text/plain", "text/html"):
            continue
        if part.get_content_disposition() == "attachment" or part.get_filename():
            continue
        (html if part.get_content_type() == "text/html" else plain).append(part_text(part)[:max_chars])
    text = "\n\n".join(t for t in plain if t.strip()) or html_to_text("\n".join(html)[:max_chars])
    return repair_text(text)[:max_chars].strip()


def read_attached(mail: ParsedMail, index: int, note: str, max_bytes: int, bounds: Parsing) -> Forward | None:
    """The mail attached as attachment `index`, if it has a From to open a ticket for."""
    try:
        original = parse(mail.attachments[index].data, max_bytes, None, bounds)
    except Exception:  # an attached mail we cannot read stays an attachment, as before
        return None
    if original.sender_header != "from":
        return None  # no From: whom it was for is not known
    files: list[MailAttachment] = [*original.attachments]
    files += [a for n, a in enumerate(mail.attachments) if n != index]
    text = original.text
    if note:
        text = f"{note}\n\n{forward_block(original.from_name, original.from_addr, original)}\n\n{original.text}"
    content = dataclasses.replace(
        mail,
        from_addr=original.from_addr,
        from_name=original.from_name,
        to=original.to,
        cc=original.cc,
        subject=original.subject,
        date=original.date or mail.date,
        text=text.strip("\n"),
        attachments=files,
    )
    return Forward(
        shape="attached message/rfc822",
        explicit=True,
        from_name=original.from_name,
        from_addr=original.from_addr,
        to=original.to,
        cc=original.cc,
        subject=original.subject,
        date=_date_text(original.date),
        text=original.text,
        note=note,
        original=original,
        content=content,
    )


def forward_block(name: str, address: str, original: ParsedMail) -> str:
    """The lines a stored forward shows between the forwarder's note and the original's text."""
    lines = ["---------- Forwarded message ----------", f"From: {email.utils.formataddr((name, address))}"]
    if original.date is not None:
        lines.append(f"Date: {_date_text(original.date)}")
    lines.append(f"Subject: {original.subject}")
    for label, pairs in (("To", original.to), ("Cc", original.cc)):
        if pairs:
            lines.append(f"{label}: " + ", ".join(email.utils.formataddr(p) for p in pairs[:20]))
    return "\n".join(lines)


def _date_text(when: datetime | None) -> str:
    return email.utils.format_datetime(when) if when is not None else ""
