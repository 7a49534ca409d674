"""ingest/forwards.py alone: the original inside a forward, in the shapes clients write it.
Pure and fast; the pipeline's use of it is in test_forward_on_behalf.py."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from mailgate.config import Parsing
from mailgate.ingest.forwards import find_forward, find_inline, is_reply_subject
from mailgate.ingest.parse import parse
from mailgate.ingest.text import html_to_text
from tests.mails import mail

LIMIT = 10 * 1024 * 1024


def forward_in(raw: bytes):
    return find_forward(parse(raw, LIMIT), LIMIT, Parsing())


def test_gmail_with_a_subject_wrapped_onto_two_lines() -> None:
    found = find_inline(
        "fyi\n\n---------- Forwarded message ----------\nFrom: Some One <foo@bar.com>\n"
        "Date: Thu, Jan 28, 2016 at 4:00 PM\nSubject: Some subject that\nspans over 2 lines\n"
        "To: infod@discourse.org\n\n\nThis is a forwarded email.\n"
    )
    assert (found.from_name, found.from_addr) == ("Some One", "foo@bar.com")
    assert found.subject == "Some subject that spans over 2 lines"
    assert found.to == [("", "infod@discourse.org")]
    assert (found.note, found.text, found.explicit) == ("fyi", "This is a forwarded email.", True)


def test_outlook_mailto_brackets_and_semicolon_lists() -> None:
    found = find_inline(
        "see below\n\n-----Original Message-----\nFrom: Smith, Dana [mailto:Dana.Smith@Corp.Example]\n"
        "Sent: Monday, November 23, 2026 8:12 AM\nTo: Jones, Alice <alice@example.com>; bob@corp.example\n"
        "Cc: Carl (carl@corp.example)\nSubject: VPN\n\nIt drops every hour.\n"
    )
    assert found.from_addr == "dana.smith@corp.example"
    assert [a for _, a in found.to] == ["alice@example.com", "bob@corp.example"]
    assert found.cc == [("", "carl@corp.example")]
    assert found.explicit is False  # Outlook heads a reply's quote like this too
    assert found.text == "It drops every hour."


def test_an_outlook_block_naming_no_address_has_no_sender_address() -> None:
    found = find_inline("From: John Doe\nSent: Wednesday, July 09, 2014 10:27 AM\nTo: Foo\nSubject: x\n\nHi\n")
    assert (found.from_name, found.from_addr) == ("John Doe", "")


def test_a_quoted_apple_mail_forward_loses_one_level_of_quoting() -> None:
    found = find_inline(
        "Begin forwarded message:\n\n> From: Dana <dana@corp.example>\n> Subject: Plotter\n"
        "> Date: 23 November 2026 at 08:12:00 CET\n> To: alice@example.com\n>\n> Line one\n> > an older quote\n"
    )
    assert found.from_addr == "dana@corp.example"
    assert found.text == "Line one\n> an older quote"


def test_german_clients() -> None:
    weitergeleitet = find_inline(
        "---------- Weitergeleitete Nachricht ---------\nVon: Dana <dana@corp.example>\n"
        "Date: Mo., 23. Nov. 2026\nSubject: Drucker\nTo: <it@corp.example>\n\n\nHallo\n"
    )
    outlook = find_inline(
        "Gruß\n\nVon: Dana <dana@corp.example>\nGesendet: Montag, 23. November 2026 08:12\n"
        "An: Alice <alice@example.com>\nCc: Bob <bob@corp.example>\nBetreff: Drucker\n\nHallo\n"
    )
    for found in (weitergeleitet, outlook):
        assert (found.from_addr, found.subject, found.text) == ("dana@corp.example", "Drucker", "Hallo")
    assert outlook.cc == [("Bob", "bob@corp.example")] and outlook.note == "Gruß"


def test_an_ordinary_mail_or_reply_holds_no_forward() -> None:
    assert find_inline("Hello,\n\nthe printer jams.\n\nFrom: the 3rd floor\n") is None
    assert find_inline("Thanks!\n\nOn Mon, Nov 23, 2026 at 8:12 AM Dana <dana@corp.example> wrote:\n> hi\n") is None
    # A bare "From:" line needs a date beside it to be a quoted mail's header block.
    assert find_inline("From: Dana <dana@corp.example>\nSubject: x\n\nhello\n") is None


def test_a_text_of_thousands_of_from_lines_is_read_at_bounded_cost() -> None:
    assert find_inline("From: a@b.example\n\n" * 50_000) is None


def test_a_forwarded_to_line_of_a_hundred_thousand_addresses_yields_a_bounded_few() -> None:
    many = ", ".join(f"p{i}@corp.example" for i in range(100_000))
    found = find_inline(f"-----Original Message-----\nFrom: dana@corp.example\nSent: today\nTo: {many}\n\nhi\n")
    assert found.from_addr == "dana@corp.example" and found.text == "hi"
    assert 0 < len(found.to) <= 200


def test_reply_subjects() -> None:
    assert is_reply_subject("RE: VPN") and is_reply_subject("AW: Drucker") and is_reply_subject("Re[2]: x")
    assert not is_reply_subject("FW: VPN") and not is_reply_subject("WG: Drucker") and not is_reply_subject("Reset")


def test_the_mail_attached_as_message_rfc822_brings_its_headers_text_and_files() -> None:
    original = EmailMessage(policy=SMTP)
    original["From"] = "Dana <dana@corp.example>"
    original["To"] = "alice@example.com"
    original["Cc"] = "bob@corp.example"
    original["Subject"] = "Plotter"
    original["Message-ID"] = "<o-1@corp.example>"
    original.set_content("Prints twice.\n")
    original.add_attachment(b"PNG", maintype="image", subtype="png", filename="photo.png")
    outer = EmailMessage(policy=SMTP)
    outer["From"] = "alice@example.com"
    outer["To"] = "support@example.com"
    outer["Subject"] = "FW: Plotter"
    outer.set_content("Please help her.\n")
    outer.add_attachment(original)
    del outer.get_payload()[1]["Content-Disposition"]  # inline, no file name: its text is in the body too
    outer.add_attachment(b"log", maintype="text", subtype="plain", filename="log.txt")
    raw = outer.as_bytes()
    assert "Prints twice." in parse(raw, LIMIT).text
    found = forward_in(raw)
    assert (found.from_addr, found.subject, found.shape) == ("dana@corp.example", "Plotter", "attached message/rfc822")
    assert found.note == "Please help her."  # not the original's text, which the body also shows
    assert found.cc == [("", "bob@corp.example")] and found.original.message_id == "o-1@corp.example"
    content = found.content
    assert content.from_addr == "dana@corp.example" and content.subject == "Plotter"
    assert [a.filename for a in content.attachments] == ["photo.png", "log.txt"]  # not the .eml itself
    assert content.text.startswith("Please help her.\n\n---------- Forwarded message ----------")
    assert content.text.endswith("Prints twice.")


def test_an_attached_mail_without_a_from_is_no_forward() -> None:
    outer = EmailMessage(policy=SMTP)
    outer["From"] = "alice@example.com"
    outer["Subject"] = "FW: x"
    outer.set_content("see attached\n")
    broken = EmailMessage(policy=SMTP)
    broken["Subject"] = "no sender"
    broken.set_content("text\n")
    outer.add_attachment(broken)
    assert forward_in(outer.as_bytes()) is None


def test_an_inline_forward_is_found_before_an_eml_it_carries() -> None:
    body = "---------- Forwarded message ---------\nFrom: Dana <dana@corp.example>\nDate: today\nSubject: A\n\n\nx\n"
    raw = mail(
        sender="alice@example.com",
        body=body,
        attachments=[("other.eml", "message/rfc822", b"From: z@z.example\r\n\r\nz\r\n")],
    )
    assert forward_in(raw).from_addr == "dana@corp.example"


# -- real forwards from the shared corpus ---------------------------------------------------

TEXTS = {
    "discourse-email_reply_trimmer/emails/forwarded_gmail.txt": (
        "foo@discourse.org",
        "This email is going to be forwarded",
    ),
    "discourse-email_reply_trimmer/emails/forwarded_apple.txt": (
        "foo@discourse.org",
        "This email is going to be forwarded",
    ),
    "discourse-email_reply_trimmer/emails/embedded_email_german_3.txt": ("team@discourse.org", "Some Subject"),
}
HTML = {
    "quotequail/gmail_forward.html": ("foo@bar.example", "The Subject", "Some text"),
    "quotequail/apple_forward.html": ("foo@bar.example", "The Subject", "Text of the original email"),
    "quotequail/thunderbird_forward.html": (
        "johndoe@example.com",
        "Re: Example subject",
        "Dear John,\n\nThis is a test.",
    ),
    "quotequail/mailru_forward.html": ("ivanivanov@example.com", "Тестовая тема", "Дорогой Петр,"),
}


@pytest.mark.parametrize("path", sorted(TEXTS))
def test_corpus_text_forwards(corpus: Path, path: str) -> None:
    found = find_inline((corpus / path).read_text(encoding="utf-8"))
    assert (found.from_addr, found.subject) == TEXTS[path]
    assert found.text.startswith(("Lorem ipsum", "Hallo!"))


@pytest.mark.parametrize("path", sorted(HTML))
def test_corpus_html_forwards_in_their_text_form(corpus: Path, path: str) -> None:
    found = find_inline(html_to_text((corpus / path).read_text(encoding="utf-8")))
    address, subject, text = HTML[path]
    assert (found.from_addr, found.subject) == (address, subject)
    assert found.text.startswith(text)
    assert "mailto:" not in found.from_name + found.subject


def test_corpus_outlook_original_message(corpus: Path) -> None:
    raw = (corpus / "django-helpdesk/forwarded-message.eml").read_bytes()
    found = forward_in(raw)
    assert (found.from_name, found.from_addr) == ("GitHub", "noreply@github.com")
    assert found.subject == "[GitHub API] Update notice for access token [SEC=UNOFFICIAL]"
    assert found.note == "This is email body"
