"""Step classify: is this mail written by a person? Auto-generated mail is stored but never answered.

Each rule is a small function returning a reason or None; the rules run in the order of RULES
and every hit is kept, so "why did this mail get no acknowledgement?" has an answer.
Rules come in two kinds. A *reaction* (out-of-office reply, bounce, our own mail coming back)
answers earlier mail and is never a request: it gets no ticket of its own. Other automatic mail
(a monitoring alert, a list post, a no-reply sender) may well be a request: it gets a ticket, but
never an acknowledgement.
Bounces are also read for which address failed, how, and which of our mails they concern
(ingest/bounces.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.headers import LOOP_HEADER
from mailgate.ingest.bounces import bounce_evidence, is_robot_address, read_bounce
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.parse import ParsedMail
from mailgate.reasons import Reason

_NOREPLY_LOCALPARTS = re.compile(r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|noreply[-_.+].*|.*[-_.]noreply)$", re.I)
# Reply prefixes as mail clients write them in many languages (Re, AW, SV, VS, Odp, R, RIF,
# Antw, Ответ, 回复 …), and forward prefixes (Fwd, WG, TR, RV, I, Enc, PD …), each perhaps with
# a count (Re[2]:, Re(2):, Re^2:), and [list tags] between them.
_REPLY = r"re|aw|sv|vs|odp|r|rif|antw|antwort|res|ynt|vá|отв|ответ|σχετ|回复|答复|回覆|返信"
_FORWARD = r"fwd?|fw|wg|vb|tr|rv|i|enc|pd|ilt|továbbítás|пересл|轉寄|转发|転送"
_COUNT = r"(?:\[\d+\]|\(\d+\)|\^\d+)?"


def _run(prefixes: str) -> str:
    return rf"^\s*(?:\[[^\]]{{0,100}}\]\s*|(?:{prefixes})\s*{_COUNT}\s*[:：]\s*)*"


# What auto-replies (vacation, out-of-office) put first in their subject: Outlook, Exchange,
# Gmail, Lotus Notes, Zimbra and friends, in the languages they ship.
_AUTO_PHRASES = (
    # en
    r"auto(?:matic)?[ -]?(?:reply|response|answer)|autoreply|autoresponse|auto-?response|"
    r"out of (?:the )?office(?: auto ?reply)?|away from (?:the )?office|vacation (?:reply|message|notice)|"
    # de
    r"automatische antwort|auto-?antwort|abwesenheitsnotiz|abwesenheitsmeldung|abwesenheit|"
    # fr
    r"réponse automatique|r[ée]ponse automatique d'absence|absence du bureau|absent(?:e)? du bureau|"
    # es, pt, it
    r"respuesta automática|respuesta automatica|fuera de la oficina|resposta automática|"
    r"resposta automatica|ausente do escritório|fora do escritório|risposta automatica|fuori sede|"
    r"fuori ufficio|"
    # nl, pl, cs
    r"automatisch antwoord|afwezigheidsbericht|afwezig|odpowiedź automatyczna|"
    r"automatyczna odpowiedź|poza biurem|automatická odpověď|mimo kancelář|"
    # sv, da, no, fi
    r"automatiskt svar|automatisk svar|automatisk besked|autosvar|frånvaromeddelande|"
    r"inte på kontoret|fraværende|ikke på kontoret|ikke til stede|automaattinen vastaus|"
    r"poissa toimistolta|"
    # ru, ja, zh
    r"автоматический ответ|автоответ|вне офиса|нет на месте|自動応答|自動返信|不在通知|"
    r"自动回复|自动答复|自動回覆|自動回复|不在办公室"
)
# Lotus Notes writes "AUTO: Jane Doe is out of the office (returning …)".
_LOTUS = r"auto:.{0,200}\bout of (?:the )?office\b"
# Bounces from MTAs that send no report (a person forwarding one writes "Fwd: Undeliverable").
_BOUNCE_SUBJECT = (
    r"^\s*(?:undeliverable|undelivered mail|delivery status notification|"
    r"mail delivery (?:failed|failure|system)|returned mail|delivery failure|"
    r"nicht zustellbar|unzustellbar)\b"
)
# An auto-reply's form: the phrase alone or followed by a colon ("Automatic reply: …"), behind
# nothing but reply prefixes ("AW: Abwesenheitsnotiz: …"): a reaction.
_AUTO_SUBJECT_FORM = re.compile(rf"{_run(_REPLY)}(?:(?:{_AUTO_PHRASES})\s*(?:[:：]|$)|{_LOTUS})", re.I)
# The phrase in running words ("Out of office assistant will not turn off"), or forwarded by a
# person, may be a request: automatic (no acknowledgement), but it still opens a ticket.
_AUTO_SUBJECT = re.compile(rf"{_run(_REPLY + '|' + _FORWARD)}(?:{_AUTO_PHRASES})(?!\w)|{_BOUNCE_SUBJECT}", re.I)


@dataclass
class Context:
    mail: ParsedMail
    own_addresses: set[str]
    loop_id: str
    own_list_ids: tuple[str, ...] = ()

    @property
    def via_own_list(self) -> bool:
        """Passed through one of our own groups: its list headers say nothing about the author."""
        list_id = self.mail.header("List-Id").lower()
        return any(own.lower() in list_id for own in self.own_list_ids)


Rule = Callable[[Context], str | None]


def precedence(ctx: Context) -> str | None:
    value = ctx.mail.header("Precedence").strip().lower()
    if value == "list" and ctx.via_own_list:
        return None
    return f"Precedence: {value}" if value in ("bulk", "junk", "list") else None


def mailing_list(ctx: Context) -> str | None:
    return _present("List-Id") if ctx.mail.header("List-Id") and not ctx.via_own_list else None


def autoreply_headers(ctx: Context) -> str | None:
    for name in ("X-Autoreply", "X-Autorespond", "X-Autogenerated", "X-AutoReply-From"):
        if ctx.mail.header(name):
            return _present(name)
    if ctx.mail.header("X-Auto-Response-Suppress") and ctx.mail.header("X-MS-Exchange-Generated-Message-Source"):
        return Reason("exchange_generated", "Exchange-generated message")
    return None


def _present(header: str) -> Reason:
    return Reason("header_present", f"{header} present", header=header)


def delivery_report(ctx: Context) -> str | None:
    message = ctx.mail.message
    if message.get_content_type() == "multipart/report":
        return f"multipart/report ({message.get_param('report-type') or 'unknown'})"
    return None


def robot_sender(ctx: Context) -> str | None:
    if not is_robot_address(ctx.mail.from_addr):
        return None
    return Reason("robot_sender", f"sender {ctx.mail.from_addr}", address=ctx.mail.from_addr)


def empty_return_path(ctx: Context) -> str | None:
    if ctx.mail.envelope_sender is not None and ctx.mail.envelope_sender.strip("<> ") == "":
        return Reason("null_envelope_sender", "null envelope sender (MAIL FROM:<>)")
    value = ctx.mail.message.get("Return-Path")
    if value is not None and str(value).strip() in ("<>", ""):
        return Reason("empty_return_path", "empty Return-Path (null sender)")
    return None


def failed_recipients(ctx: Context) -> str | None:
    return _present("X-Failed-Recipients") if ctx.mail.header("X-Failed-Recipients") else None


def bounce(ctx: Context) -> str | None:
    return bounce_evidence(ctx.mail)


def own_address(ctx: Context) -> str | None:
    if ctx.mail.from_addr not in ctx.own_addresses:
        return None
    return Reason("from_own_address", f"sent from our own address {ctx.mail.from_addr}", address=ctx.mail.from_addr)


def own_loop_header(ctx: Context) -> str | None:
    values = [v.strip() for v in ctx.mail.headers(LOOP_HEADER)]
    return f"{LOOP_HEADER}: {ctx.loop_id}" if ctx.loop_id in values else None


def auto_reply_subject(ctx: Context) -> str | None:
    """A subject in the form auto-replies and bounces give theirs: a reaction."""
    if not _AUTO_SUBJECT_FORM.match(ctx.mail.subject):
        return None
    subject = repr(ctx.mail.subject[:200])
    return Reason("auto_reply_subject", f"auto-reply subject {subject}", subject=subject)


def auto_subject(ctx: Context) -> str | None:
    if _AUTO_SUBJECT_FORM.match(ctx.mail.subject):
        return None  # reported by auto_reply_subject
    if not _AUTO_SUBJECT.match(ctx.mail.subject):
        return None
    subject = repr(ctx.mail.subject[:200])
    return Reason("automatic_subject", f"subject {subject}", subject=subject)


def auto_reply_precedence(ctx: Context) -> str | None:
    """`Precedence: auto_reply` (Exchange, some vacation programs): a reaction."""
    value = ctx.mail.header("Precedence").strip().lower()
    return f"Precedence: {value}" if value in ("auto_reply", "auto-reply") else None


def is_noreply_address(address: str) -> bool:
    """A robot's address (MAILER-DAEMON, no-reply@ …): nobody reads what is sent to it."""
    return is_robot_address(address) or bool(_NOREPLY_LOCALPARTS.match(address.partition("@")[0]))


def noreply_sender(ctx: Context) -> str | None:
    local = ctx.mail.from_addr.partition("@")[0]
    if not _NOREPLY_LOCALPARTS.match(local):
        return None
    return Reason("noreply_sender", f"no-reply sender {ctx.mail.from_addr}", address=ctx.mail.from_addr)


def auto_replied(ctx: Context) -> str | None:
    """RFC 3834 'auto-replied' (and Sieve's 'auto-notified'): a reaction to earlier mail."""
    value = ctx.mail.header("Auto-Submitted").strip().lower()
    return f"Auto-Submitted: {value}" if value.startswith(("auto-replied", "auto-notified")) else None


def auto_generated(ctx: Context) -> str | None:
    value = ctx.mail.header("Auto-Submitted").strip().lower()
    if value and not value.startswith(("no", "auto-replied", "auto-notified")):
        return f"Auto-Submitted: {value}"
    return None


# (rule, is_reaction), in the order their reasons are reported.
RULES: tuple[tuple[Rule, bool], ...] = (
    (own_loop_header, True),
    (own_address, True),
    (auto_replied, True),
    (autoreply_headers, True),
    (delivery_report, True),
    (robot_sender, True),
    (empty_return_path, True),
    (failed_recipients, True),
    (bounce, True),
    (auto_reply_precedence, True),
    (auto_reply_subject, True),
    # A phrase in running words is weak evidence ("Out of office assistant will not turn off" is
    # a request).
    (auto_subject, False),
    (auto_generated, False),
    (precedence, False),
    (mailing_list, False),
    (noreply_sender, False),
)


@dataclass(frozen=True)
class Verdict:
    reasons: list[str]  # empty: a person wrote it
    reaction: bool  # answers earlier mail (auto-reply, bounce, loop): never a ticket of its own


def verdict(mail: ParsedMail, own_addresses: set[str], loop_id: str, own_list_ids: tuple[str, ...] = ()) -> Verdict:
    ctx = Context(mail, own_addresses, loop_id, own_list_ids)
    hits = [(reason, reaction) for rule, reaction in RULES if (reason := rule(ctx))]
    return Verdict([reason for reason, _ in hits], any(reaction for _, reaction in hits))


def auto_reasons(
    mail: ParsedMail, own_addresses: set[str], loop_id: str, own_list_ids: tuple[str, ...] = ()
) -> list[str]:
    """Every reason to treat `mail` as auto-generated; empty when a person wrote it."""
    return verdict(mail, own_addresses, loop_id, own_list_ids).reasons


def classify(item: Incoming) -> Outcome | None:
    """Step classify: every rule's reason on the trace; a reaction is read as a bounce too."""
    addresses, outgoing = item.app.settings.addresses, item.app.settings.outgoing
    found = verdict(item.mail, addresses.our_senders(), outgoing.loop_id, tuple(addresses.own_list_ids))
    item.reasons, item.reaction = found.reasons, found.reaction
    for reason in found.reasons:
        item.note("classify", reason)
    item.bounce = read_bounce(item.mail) if found.reaction else None
    return None
