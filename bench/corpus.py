"""What a help desk would see of the shared corpus' real mail: bounces, charsets, quote trimming.

    MAILGATE_CORPUS=/work/shared/corpus python bench/corpus.py [--misses]

Prints, per source:
- bounces: how many the classifier treats as a bounce (stored, never answered, read for the
  failed address), how many name at least one failed address, and, where the source states it
  (perl-BounceParser's t/*.t), how many name the right one;
- charsets: of the mails with non-ASCII text, how many show U+FFFD or mojibake in the subject or
  the text a ticket shows; the same for non-ASCII sender and attachment file names;
- quotes: Discourse's trimmed set (exact, or the expected text contained), quotequail's HTML
  replies (the new part alone) and forwards (kept whole), and how many HTML-only replies in the
  mail folders still carry a quote header after trimming;
- backscatter: of the mails a receiving MTA marked as spam, how many get no acknowledgement from
  the automatic-mail rules alone (all that withheld one before ingest/spam.py) and now; and how
  many carry Authentication-Results whose top authserv-id, were it trusted, reports a failure.
Nothing is written; no database is needed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared expectations in tests/

from mailgate.ingest.authentication import authentication_failure
from mailgate.ingest.classify import verdict
from mailgate.ingest.parse import ParsedMail, Unparseable, parse

# Bounces are read by one function; the figures follow it when it moves.
try:
    from mailgate.ingest.bounces import read_bounce
except ImportError:  # before ingest/bounces.py existed
    from mailgate.ingest.classify import read_bounce
try:
    from mailgate.ingest.quotes import extract_reply
except ImportError:  # before ingest/quotes.py existed
    from mailgate.ingest.text import extract_reply
from mailgate.ingest.spam import spam_verdict
from mailgate.ingest.text import html_to_text
from tests.corpus_expectations import PERL_NOT_BOUNCES, PERL_USER_UNKNOWN

OWN = {"support@example.com", "dispatch@example.com", "helpdesk@example.com"}
MAX_BYTES = 50_000_000
BODY_ONLY = {"zapier-email-reply-parser", "github-email_reply_parser", "discourse-email_reply_trimmer", "quotequail"}


def _mail(path: Path) -> ParsedMail | None:
    try:
        return parse(path.read_bytes(), MAX_BYTES)
    except Unparseable:
        return None


def _share(ok: int, total: int) -> str:
    return f"{ok}/{total} ({ok / total:.0%})" if total else "0/0"


@dataclass
class Figure:
    name: str
    ok: int = 0
    total: int = 0
    misses: list[str] = field(default_factory=list)

    def count(self, good: bool, what: str) -> None:
        self.total += 1
        self.ok += good
        if not good:
            self.misses.append(what)

    def line(self, show_misses: bool) -> str:
        text = f"  {self.name:<52} {_share(self.ok, self.total)}"
        if show_misses and self.misses:
            text += "".join(f"\n      miss: {m}" for m in self.misses)
        return text


# --- bounces ----------------------------------------------------------------------------------


def bounce_sets(corpus: Path) -> dict[str, list[Path]]:
    """The corpus' bounces by source: delivery reports and prose bounces, no auto-replies or ARF."""
    sisimai = [
        p
        for p in sorted((corpus / "sisimai-set-of-emails").rglob("*"))
        if p.is_file() and "/maildir/not/" not in str(p) and not re.match(r"(arf|rfc3834)-", p.name)
    ]
    perl = [p for p in sorted((corpus / "perl-BounceParser/corpus").glob("*.msg")) if p.stem not in PERL_NOT_BOUNCES]
    return {
        "sisimai-set-of-emails": sisimai,
        "perl-BounceParser": perl,
        "bounce_email-rb/bounces": sorted((corpus / "bounce_email-rb/bounces").iterdir()),
        "flanker/bounce": sorted((corpus / "flanker/bounce").iterdir()),
    }


def bounce_figures(corpus: Path) -> list[Figure]:
    figures = []
    for source, paths in bounce_sets(corpus).items():
        recognised, named = Figure(f"{source}: read as a bounce"), Figure(f"{source}: a failed address")
        for path in paths:
            rel = str(path.relative_to(corpus))
            mail = _mail(path)
            if mail is None:
                recognised.count(False, f"{rel}: unparseable")
                named.count(False, f"{rel}: unparseable")
                continue
            bounce = read_bounce(mail)
            reaction = verdict(mail, OWN, "corpus-bench").reaction
            recognised.count(reaction and bounce is not None, rel)
            named.count(bool(bounce and bounce.failures), rel)
        figures += [recognised, named]
    right = Figure("perl-BounceParser: the right failed address")
    for stem in PERL_USER_UNKNOWN:
        mail = _mail(corpus / f"perl-BounceParser/corpus/{stem}.msg")
        bounce = read_bounce(mail) if mail else None
        got = [f.address for f in bounce.failures] if bounce else None
        right.count(bool(got) and "recipient@example.net" in got, f"{stem}: {got}")
    return [*figures, right]


# --- charsets ---------------------------------------------------------------------------------

_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
# Four or more letters from Latin-1's upper half and nothing else, two of them rare in Western
# languages: Cyrillic or Greek text read with a Western charset ("Ïðèâåò"), not a test line of
# German umlauts ("äöüß").
_LATIN1_WORD = re.compile(r"(?<![A-Za-z])[\xc0-\xff]{4,}(?![A-Za-z])")
_COMMON_ACCENTS = set("äöüßÄÖÜéèêëàâçîïôûùñáíóúÉÈÀÇ")


def unreadable(text: str) -> str | None:
    """Why `text` looks wrongly decoded, or None."""
    if "\ufffd" in text:
        return "U+FFFD"
    for run in _NON_ASCII_RUN.findall(text):
        for charset in ("cp1252", "latin-1"):
            try:
                if run.encode(charset).decode("utf-8") != run:
                    return f"UTF-8 read as {charset}: {run[:20]!r}"
            except UnicodeError:
                continue
    for word in _LATIN1_WORD.findall(text):
        if len(set(word) - _COMMON_ACCENTS) >= 2:
            return f"8-bit text read as Latin-1: {word[:20]!r}"
    return None


def mail_files(corpus: Path) -> Iterable[Path]:
    for path in sorted(corpus.rglob("*")):
        rel = path.relative_to(corpus)
        if not path.is_file() or len(rel.parts) == 1 or rel.parts[0] in BODY_ONLY:
            continue
        name = path.name
        if name.startswith("README") or name.endswith((".md", ".json", ".xml", ".out", ".bin")):
            continue
        if (rel.parts[0] == "mime4j" and not name.endswith(".msg")) or name.endswith("-summary.txt"):
            continue
        yield path


def charset_figure(corpus: Path, mails: dict[Path, ParsedMail]) -> Figure:
    figure = Figure("readable subject and text, of the non-ASCII mails")
    for path, mail in mails.items():
        shown = f"{mail.subject}\n{mail.text}"
        if shown.isascii() and b"=?" not in mail.raw and not any(b > 0x7F for b in mail.raw):
            continue
        why = unreadable(shown)
        figure.count(why is None, f"{path.relative_to(corpus)}: {why}")
    return figure


def names_figure(corpus: Path, mails: dict[Path, ParsedMail]) -> Figure:
    """Sender names and attachment file names with non-ASCII letters (or undecoded bytes)."""
    figure = Figure("readable sender and file names, of the non-ASCII ones")
    for path, mail in mails.items():
        for name in (mail.from_name, *(a.filename for a in mail.attachments)):
            if name and not name.isascii():
                why = unreadable(name)
                figure.count(why is None, f"{path.relative_to(corpus)}: {name[:40]!r} {why}")
    return figure


# --- quotes -----------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.split())


def discourse_figure(corpus: Path) -> Figure:
    """As tests/test_corpus.py counts it: the trimmed text equals discourse's, or contains it."""
    root = corpus / "discourse-email_reply_trimmer"
    figure = Figure("discourse trimmed set")
    for path in sorted((root / "emails").iterdir()):
        got = _norm(extract_reply(path.read_text(encoding="utf-8", errors="replace")))
        expected = _norm((root / "trimmed" / path.name).read_text(encoding="utf-8", errors="replace"))
        figure.count(got == expected or bool(expected and expected in got), path.name)
    return figure


# quotequail's tests/test_unwrap_html.py: the text above the quote of each reply fixture, and a
# line from deep inside each forwarded mail (a forward is kept whole).
# The phone's "Sent from my iPhone" may go with the signature or stay.
QUOTEQUAIL_REPLIES = {
    "apple_reply.html": ("Foo Bar",),
    "gmail_reply.html": ("foo bar",),
    "ios_mail_reply_unescaped_address.html": (
        "Sounds good, I'll be there at 2.",
        "Sounds good, I'll be there at 2. Sent from my iPhone",
    ),
    "yahoo_reply_unescaped_address.html": (
        "Thanks Jane, that looks great. One question on item 2 - can we ship it before Friday? Dan",
    ),
}
QUOTEQUAIL_FORWARDS = {
    "apple_forward.html": "Text of the original email",
    "gmail_forward.html": "Some text",
    "outlook_forward.html": "How are you doing?",
    "thunderbird_forward.html": "This is a test.",
    "mailru_forward.html": "Это тест!",
}


def quotequail_figures(corpus: Path) -> list[Figure]:
    root = corpus / "quotequail"
    replies, forwards = Figure("quotequail HTML replies: only the new text"), Figure("quotequail HTML forwards kept")
    for name, tops in QUOTEQUAIL_REPLIES.items():
        got = _norm(extract_reply(html_to_text((root / name).read_text(encoding="utf-8"))))
        replies.count(got in tops, f"{name}: {got[:120]!r}")
    for name, inner in QUOTEQUAIL_FORWARDS.items():
        got = extract_reply(html_to_text((root / name).read_text(encoding="utf-8")))
        forwards.count(inner in got, f"{name}: {_norm(got)[:120]!r}")
    return [replies, forwards]


# What remains of a quote when trimming missed it: a header block, a rule made of an <hr>,
# an "Original Message" separator, an attribution line, or ">" lines.
_QUOTE_LEFT = re.compile(
    r"^\s*(\**\s*(from|von|de|van|od|от)\s*:\**.*\n\s*\**\s*(sent|date|gesendet|datum|envoyé|enviado|verzonden|"
    r"wysłano|отправлено)\s*:|\* \* \*\s*$|-{3,}\s*original message|.{0,200}\bwrote:\s*$|>)",
    re.I | re.M,
)


def html_reply_figure(corpus: Path, mails: dict[Path, ParsedMail]) -> Figure:
    figure = Figure("corpus HTML-only replies without a quote left")
    for path, mail in mails.items():
        has_plain, has_html = _html_flags(mail)
        if has_plain or not has_html or not mail.header("In-Reply-To"):
            continue
        left = _QUOTE_LEFT.search(extract_reply(mail.text))
        figure.count(left is None, f"{path.relative_to(corpus)}: {left and left.group().strip()[:60]!r}")
    return figure


def _html_flags(mail: ParsedMail) -> tuple[bool, bool]:
    types = {part.get_content_type() for part in mail.message.walk()}
    return "text/plain" in types, "text/html" in types


# --- backscatter ------------------------------------------------------------------------------


def backscatter_figures(corpus: Path, mails: dict[Path, ParsedMail]) -> list[Figure]:
    before = Figure("marked as spam: no acknowledgement by the automatic-mail rules")
    now = Figure("marked as spam: no acknowledgement now")
    failed = Figure("Authentication-Results (top authserv-id trusted): no failure")
    for path, mail in mails.items():
        rel = str(path.relative_to(corpus))
        automatic = bool(verdict(mail, OWN, "corpus-bench").reasons)
        spam = spam_verdict(mail.message, scl_threshold=5)
        if spam is not None:
            before.count(automatic, f"{rel}: {spam}")
            now.count(True, rel)
        top = _top_authserv_id(mail)
        if top:
            failure = authentication_failure(mail.message, {top}, mail.from_addr.rpartition("@")[2])
            failed.count(failure is None, f"{rel}: {failure}")
    return [before, now, failed]


def _top_authserv_id(mail: ParsedMail) -> str:
    for value in mail.headers("Authentication-Results"):
        return value.split(";")[0].split()[0].lower() if value.strip() else ""
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=os.environ.get("MAILGATE_CORPUS", ""), help="the corpus folder")
    parser.add_argument("--misses", action="store_true", help="list every miss under its figure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # mail-parser and ingest warn about every odd part
    corpus = Path(args.corpus)
    if not args.corpus or not (corpus / "SOURCES.md").is_file():
        parser.error(f"--corpus {args.corpus!r}: expected the corpus folder (with SOURCES.md), or set MAILGATE_CORPUS")
    mails = {path: mail for path in mail_files(corpus) if (mail := _mail(path)) is not None}
    sections: list[tuple[str, Callable[[], list[Figure]]]] = [
        ("bounces", lambda: bounce_figures(corpus)),
        ("charsets", lambda: [charset_figure(corpus, mails), names_figure(corpus, mails)]),
        ("quotes", lambda: [discourse_figure(corpus), *quotequail_figures(corpus), html_reply_figure(corpus, mails)]),
        ("backscatter", lambda: backscatter_figures(corpus, mails)),
    ]
    for title, figures in sections:
        print(title)
        for figure in figures():
            print(figure.line(args.misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
