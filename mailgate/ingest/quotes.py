"""The newly written part of a reply: quoted history, the header block above it and the
signature removed; a quote the person answers below is kept, and a forward is kept whole.

email_reply_parser (the GitHub/Zapier algorithm) splits the text into fragments; it knows only
English attribution lines and Outlook's English header block. Clients in other languages, and
HTML converted to text, start the history with lines it does not know, so the text is first cut
where such a history starts.
"""

from __future__ import annotations

import itertools
import re

# Attribution lines above a quote, in the languages clients write them ("On … wrote:",
# "Am … schrieb:", "Le … a écrit :", "El … escribió:", "Op … schreef …:", "W dniu … napisał(a):",
# "… написал(а):"): a verb, maybe the name after it, a colon at the end; the date and name may
# wrap onto a second line. It names a date or an address, and a quote follows (checked where
# it is used).
_ATTRIBUTION = re.compile(
    r"^(?=[^\n]*(?:\n[^\n]*)?[\d@])[^\n]{0,200}?\b(wrote|writes|schrieb|a écrit|escribió|ha scritto|schreef|"
    r"escreveu|skrev|napsal|napisał|napisała|pisze|написал|написала|пише|kirjoitti|írta|yazdı)(\(a\))?"
    r"[^\n:]{0,100}(\n[^\n:]{0,100})?\s*:\s*$",
    re.I | re.M,
)
# A header block of the quoted mail (Outlook and others, also after HTML conversion): a From
# line and, within the next lines, a date or sent line and a subject or to line.
_FROM = r"(from|von|de|van|od|от|från|fra|da|lähettäjä|feladó)"
_SENT = r"(sent|date|gesendet|datum|envoyé|enviado|fecha|verzonden|wysłano|data|отправлено|дата|skickat|sendt|inviato)"
_SUBJECT = r"(subject|to|betreff|an|objet|à|asunto|para|onderwerp|aan|temat|do|тема|кому|ämne|emne|oggetto|a)"
_HEADER_BLOCK = re.compile(
    rf"^[ \t>]*\**{_FROM}\s*:\**[^\n]*\n(?:[ \t>]*\**\w+\s*:\**[^\n]*\n){{0,3}}?[ \t>]*\**{_SENT}\s*:\**[^\n]*\n"
    rf"(?:[ \t>]*\**\w+\s*:\**[^\n]*\n){{0,3}}?[ \t>]*\**{_SUBJECT}\s*:",
    re.I | re.M,
)
# Separator lines above a quoted mail: "-----Original Message-----" in its translations, a line
# of underscores (Outlook), and the "* * *" that an <hr> becomes in HTML-to-text conversion.
_SEPARATOR = re.compile(
    r"^[ \t>]*\\?-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original|"
    r"oorspronkelijk bericht|wiadomość oryginalna|исходное сообщение|originalmeddelande|messaggio originale)\s*-{2,}"
    r"\s*$|^[ \t]*_{10,}\s*$|^[ \t]*\* \* \*\s*$",
    re.I | re.M,
)
# The line Gmail, Thunderbird, Apple Mail, Outlook or mail.ru put above a forwarded mail; HTML
# conversion may escape its dashes ("\---") or quote it ("> Begin forwarded message:").
_FORWARD_MARKER = re.compile(
    r"^[ \t>]*\\?-{3,}\s*(forwarded message|weitergeleitete nachricht|message transféré|mensaje reenviado|"
    r"doorgestuurd bericht|wiadomość przekazana|пересылаемое сообщение|vidarebefordrat meddelande|"
    r"messaggio inoltrato)\s*-{3,}|^[ \t>]*begin forwarded message:",
    re.I | re.M,
)
# A quoted line: ">" or a Supercite prefix ("C>", "AB>").
_QUOTED_LINE = re.compile(r"^\s*[A-Za-z]{0,3}>")


def _history_start(text: str) -> int | None:
    """Where a quoted mail that email_reply_parser does not recognise starts, if anywhere."""
    starts = []
    for pattern in (_HEADER_BLOCK, _SEPARATOR):
        if match := pattern.search(text):
            starts.append(match.start())
    for match in itertools.islice(_ATTRIBUTION.finditer(text), 20):  # a hostile mail may hold thousands
        # Only an attribution followed by the quote (or by nothing) starts the history; one with
        # new text below it is an answer interleaved with the quote.
        rest = text[match.end() :].lstrip("\n")
        if not rest.strip() or _QUOTED_LINE.match(rest):
            after_quote = re.sub(r"^(\s*[A-Za-z]{0,3}>.*\n?|\s*\n)*", "", rest)
            if not after_quote.strip():
                starts.append(match.start())
                break
    return min(starts) if starts else None


def _without_quote_remains(reply: str) -> str:
    """Attribution lines above a kept quote, and trailing quoted lines, that the parser left."""
    lines: list[str] = []
    after = ""  # the next non-blank line below, walking up from the end
    for line in reversed(reply.split("\n")):
        if not (_ATTRIBUTION.match(line) and _QUOTED_LINE.match(after)):
            lines.append(line)
        after = line if line.strip() else after
    lines.reverse()
    while lines and (not lines[-1].strip() or _QUOTED_LINE.match(lines[-1])):
        lines.pop()
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def extract_reply(text: str) -> str:
    """The newly written part of a reply. When nothing is left, the trimming was wrong (a reply
    below the quote it cut, a mail that is all quote): the whole text is kept rather than
    losing what the person wrote."""
    from email_reply_parser import EmailReplyParser

    # HTML conversion escapes a line's leading dashes ("\-- " for a signature separator).
    text = re.sub(r"^\\(-)", r"\1", text.replace("\r\n", "\n"), flags=re.M)
    start = _history_start(text)
    forward = _FORWARD_MARKER.search(text)
    if forward and (start is None or forward.start() <= start):
        return text  # a forward: what was forwarded is the content, keep it all
    head = text[:start] if start is not None and text[:start].strip() else text
    fragments = EmailReplyParser.read(head).fragments
    # Quoted fragments above new text stay (the person answers them); the parser hides what
    # follows the last new text: the trailing quote and the signature.
    reply = "\n".join(f.content for f in fragments if not f.hidden and not f.headers)
    return _without_quote_remains(reply) or text
