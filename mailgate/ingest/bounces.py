"""Bounces: is this mail a non-delivery report, which addresses failed, how, and which of our
mails it concerns.

Two kinds reach a help desk. RFC 3464 delivery status notifications are read here field by
field: they give the status, the diagnostic and the address as we sent it. MTAs that send none
(qmail, Exchange, Domino, Yahoo, Postfix without DSN) write prose; flufl.bounce (Mailman's bounce
detectors) reads those, and read more addresses from the corpus' bounces than either our own
reader or the other libraries on PyPI. Its heuristics find "addresses" in any text (uuencoded
lines, for one), so prose is read only from mail that already looks like a bounce, and only
what is shaped like an address is kept.
"""

from __future__ import annotations

import email.utils
import logging
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser

from mailgate.ingest.parse import ParsedMail, message_ids

log = logging.getLogger(__name__)

_DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers", "message/global-headers")
_ROBOT_LOCALPART = re.compile(r"^(mailer-daemon|mailerdaemon|mail-daemon|postmaster)$", re.I)
# Subjects non-delivery reports carry, in the languages MTAs localise them to. A reply or a
# forward (a person passing a bounce on) is not one.
_BOUNCE_SUBJECT = re.compile(
    r"undeliver(able|ed)|could not be delivered|not delivered|delivery (status notification|failure|failed|has failed|"
    r"problem)|mail delivery (failed|failure|system|subsystem|problem)|returned mail|return(ed|ing) (mail|message) to "
    r"sender|failure notice|non[- ]?deliver(y|able)|nondeliverable|nicht zustellbar|unzustellbar|zustellung "
    r"fehlgeschlagen|non remis|non distribuable|échec de (la )?(remise|distribution)|no se (pudo|puede) entregar|"
    r"mensaje no entregado|non recapitabile|onbestelbaar|niedostarczalne|недоставлен|не доставлено",
    re.I,
)
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|vs|fw|fwd|wg|tr|rv|doorst)\s*:", re.I)
# What an address a bounce names must look like: local@domain with a dot in the domain.
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]{1,64}@[\w-]+(\.[\w-]+)+$")
# Prose no detector knows: Postfix without a DSN part, Courier and qmail variants put each failed
# address at the start of a line ("<a@b>: host … said: 550 …"); others write "delivering your
# mail to <a@b>". Read only above the returned copy, whose header lines name other addresses.
_PROSE_RECIPIENT = re.compile(
    r"^\s*<([^<>\s]+@[^<>\s]+)>\s*:|\b(?:deliver\w*|sen[dt]\w*)\b[^\n<]{0,40}\bto:?\s*<([^<>\s]+@[^<>\s]+)>",
    re.I | re.M,
)
_RETURNED_COPY = re.compile(r"^(Return-Path|Received|Message-ID|From|Date):", re.I | re.M)
_TEMPORARY = re.compile(
    r"warning message only|do not need to resend|still (being )?retried|will (be )?retr(y|ied)|"
    r"temporary (error|failure)|delivery (has been )?delayed",
    re.I,
)
_RETURNED_ID_LINE = re.compile(r"^\s*(Message-ID|In-Reply-To|References):\s*((?:.*\n[ \t].*)*.*)$", re.I | re.M)


@dataclass
class Failure:
    address: str
    status: str
    permanent: bool
    diagnostic: str = ""


@dataclass
class Bounce:
    failures: list[Failure] = field(default_factory=list)
    # Message-IDs of the original mail, from the returned headers: ties the bounce to a ticket.
    original_ids: list[str] = field(default_factory=list)


def _address(value: str) -> str:
    """The address of a DSN recipient field ("rfc822; <a@b>") or a detector's find, or ''."""
    value = value.split(";", 1)[1] if ";" in value else value
    address = email.utils.parseaddr(value.strip())[1].strip("<> ").lower()
    return address if _ADDRESS.match(address) else ""


def _blocks(report: Message) -> list[Message]:
    """The field blocks of a delivery-status part. A report whose blank lines the parser did not
    split (a text payload) is split here."""
    payload = report.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = payload if isinstance(payload, str) else ""
    if report.get("Content-Transfer-Encoding", "").lower() in ("base64", "quoted-printable"):
        text = str(report.get_payload(decode=True) or b"", "utf-8", "replace")
    return [HeaderParser().parsestr(block.strip() + "\n") for block in re.split(r"\n\s*\n", text) if block.strip()]


def _field(block: Message, name: str) -> str:
    return " ".join(str(block.get(name, "") or "").split())


def dsn_failures(report: Message) -> list[Failure]:
    """The failed and delayed recipients of one delivery-status part (RFC 3464 section 2.3)."""
    failures = []
    for block in _blocks(report):
        # Original-Recipient is the address as our mail named it; Final-Recipient may be where
        # an alias or a forward led.
        address = _address(_field(block, "Original-Recipient")) or _address(_field(block, "Final-Recipient"))
        action = _field(block, "Action").lower().split(" ", 1)[0].rstrip(";,")  # "failed (bad mailbox)"
        status = _field(block, "Status").split(" ", 1)[0]  # "5.1.1 (unknown user)" or a bare "553"
        if not address or action not in ("failed", "delayed", ""):
            continue  # delivered, relayed, expanded: no failure
        if action == "" and not status.startswith(("4", "5")):
            continue
        permanent = action != "delayed" and not status.startswith("4")
        failures.append(Failure(address, status, permanent, _field(block, "Diagnostic-Code")))
    return failures


def _skipping_returned(message: Message) -> list[Message]:
    """Every part, but not the inside of a returned mail (its own parts are not the report's)."""
    found, stack = [], [message]
    while stack:
        part = stack.pop()
        found.append(part)
        if part.get_content_type() not in _RETURNED_TYPES and isinstance(payload := part.get_payload(), list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
    return found


def _returned_headers(part: Message) -> str:
    """The headers of our mail as the bounce returns them, as text."""
    inner = part.get_payload()
    if isinstance(inner, list) and inner:
        try:
            return inner[0].as_string()
        except (UnicodeError, LookupError, ValueError):  # 8-bit bytes the generator cannot encode
            return "\n".join(f"{k}: {v}" for k, v in inner[0].items())
    return str(part.get_payload(decode=True) or b"", "utf-8", "replace")


def _ids_in(text: str) -> list[str]:
    return [found for match in _RETURNED_ID_LINE.finditer(text) for found in message_ids(match.group(2))]


def is_robot_address(address: str | None) -> bool:
    """MAILER-DAEMON, postmaster and the like: the senders of non-delivery reports."""
    return bool(address) and bool(_ROBOT_LOCALPART.match(str(address).strip("<> ").partition("@")[0]))


def return_path_robot(mail: ParsedMail) -> str | None:
    """The mailer-daemon return path some MTAs put on their bounces instead of the null sender."""
    for value in (mail.envelope_sender, str(mail.message.get("Return-Path") or "")):
        if is_robot_address(value):
            return str(value).strip()
    return None


def bounce_subject(mail: ParsedMail) -> bool:
    return not _REPLY_PREFIX.match(mail.subject) and bool(_BOUNCE_SUBJECT.search(mail.subject))


def _null_sender(mail: ParsedMail) -> bool:
    values = [mail.envelope_sender, mail.message.get("Return-Path")]
    return any(value is not None and str(value).strip("<> ") == "" for value in values)


def _looks_like_bounce(mail: ParsedMail) -> bool:
    robot = is_robot_address(mail.from_addr) or return_path_robot(mail) is not None or _null_sender(mail)
    return robot or bounce_subject(mail)


def prose_failures(mail: ParsedMail) -> list[Failure]:
    """Failed addresses in a bounce without a delivery-status part, by flufl.bounce's detectors."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(mail.message)
    except Exception:  # a detector tripping over hostile input: no addresses, not a lost mail
        log.debug("bounce detectors failed on msgid=%s", mail.logged_id, exc_info=True)
        return []
    failures: dict[str, Failure] = {}
    for found, is_permanent in [(a, True) for a in permanent] + [(a, False) for a in temporary]:
        raw = found.decode("utf-8", "replace") if isinstance(found, bytes) else str(found)
        if (address := _address(raw)) and address not in failures:
            failures[address] = Failure(address, "5.0.0" if is_permanent else "4.0.0", is_permanent)
    return list(failures.values()) or _prose_failures_by_pattern(mail)


def _prose_failures_by_pattern(mail: ParsedMail) -> list[Failure]:
    text = mail.text
    if copy := _RETURNED_COPY.search(text):
        text = text[: copy.start()]
    permanent = not _TEMPORARY.search(text)
    found = dict.fromkeys(a for m in _PROSE_RECIPIENT.finditer(text) if (a := _address(m.group(1) or m.group(2))))
    return [Failure(address, "5.0.0" if permanent else "4.0.0", permanent) for address in found]


def bounce_evidence(mail: ParsedMail) -> str | None:
    """Why `mail` is a bounce where the classifier's header rules see nothing: a delivery-status
    part inside another multipart, a mailer-daemon return path, or a bounce's subject on a text
    naming failed addresses."""
    top = mail.message.get_content_type()
    if top != "multipart/report" and any(p.get_content_type() in _DSN_TYPES for p in _skipping_returned(mail.message)):
        return "delivery status report inside " + top
    if robot := return_path_robot(mail):
        return f"return path {robot}"
    if bounce_subject(mail) and prose_failures(mail):
        return f"non-delivery subject {mail.subject[:80]!r} naming failed addresses"
    return None


def read_bounce(mail: ParsedMail) -> Bounce | None:
    """What a non-delivery report says, or None for mail that is not one."""
    parts = _skipping_returned(mail.message)
    reports = [p for p in parts if p.get_content_type() in _DSN_TYPES]
    failed_header = mail.header("X-Failed-Recipients")
    bounce = Bounce()
    for report in reports:
        bounce.failures.extend(dsn_failures(report))
    if failed_header and not bounce.failures:
        # Exim's X-Failed-Recipients lists addresses whose delivery failed permanently.
        for value in re.split(r"[,\s]+", failed_header):
            if address := _address(value):
                bounce.failures.append(Failure(address, "5.0.0", True))
    reported = bool(reports or failed_header)
    if not reported and not _looks_like_bounce(mail):
        return None
    if not bounce.failures:  # prose, or a report too damaged for its fields to be read
        bounce.failures = prose_failures(mail)
    if not reported and not bounce.failures and not bounce_subject(mail):
        return None  # a robot's mail, but no report: an auto-reply or a notice
    # The bounce's own sender and the address it returns to (ours) never failed: a detector
    # that names them read the wrong line.
    own = {mail.from_addr, *(address for _, address in mail.to)}
    bounce.failures = [f for f in bounce.failures if f.address not in own and not is_robot_address(f.address)]
    for part in parts:
        if part.get_content_type() in _RETURNED_TYPES:
            bounce.original_ids.extend(_ids_in(_returned_headers(part)))
    if not bounce.original_ids:  # the returned mail pasted into the text, as prose bounces do
        bounce.original_ids = _ids_in(mail.text)
    return bounce
