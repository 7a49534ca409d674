"""A proven staff member forwards an employee's mail to the desk: the ticket is the employee's
(issue 12, item 8). Inline forwards of the common clients, in text and in HTML, and the mail
attached as message/rfc822; a From header alone proves nothing, so a forged or unproven forward
is an ordinary ticket for its sender."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Event, Message, Participant, Person, Ticket
from tests.conftest import make_settings
from tests.mails import mail
from tests.test_ingest import outbox
from tests.test_threading_rules import says

MX = "mx.example.com"
PROVEN = f"Authentication-Results: {MX}; dmarc=pass header.from=example.com\r\n".encode()
NOTE = "Please look at this, Dana has been waiting since Monday."
ORIGINAL_TEXT = "The plotter in room 4.12 prints every page twice."
ORIGINAL_SUBJECT = "Plotter prints twice"


@pytest.fixture
def app(tmp_path, db_url, clock):
    settings = make_settings(
        tmp_path,
        db_url,
        acknowledgements={"trusted_authserv_ids": [MX]},
        staff=[
            {"address": "alice@example.com", "name": "Alice Jones", "teams": ["network"]},
            {"address": "dispatch@example.com", "name": "Dispatcher", "role": "dispatcher"},
        ],
    )
    application = App.build(settings, clock=clock)
    yield application
    application.close()


def forward_from(sender: str, body: str | None, *, proven: bool = True, html: str | None = None, **kw) -> bytes:
    raw = mail(sender=sender, subject=kw.pop("subject", f"Fwd: {ORIGINAL_SUBJECT}"), body=body, html=html, **kw)
    return (PROVEN + raw) if proven else raw


# The forwarded block as each client writes it below the forwarder's note.
SHAPES = {
    "gmail": (
        "---------- Forwarded message ---------\n"
        "From: Dana Smith <dana@corp.example>\n"
        "Date: Mon, Nov 23, 2026 at 8:12 AM\n"
        f"Subject: {ORIGINAL_SUBJECT}\n"
        "To: <alice@example.com>\n"
        "Cc: Bob Brown <bob@corp.example>, support@example.com\n"
        "\n\n"
    ),
    "outlook original message": (
        "-----Original Message-----\n"
        "From: Dana Smith [mailto:dana@corp.example]\n"
        "Sent: Monday, November 23, 2026 8:12 AM\n"
        "To: Alice Jones <alice@example.com>\n"
        "Cc: Bob Brown <bob@corp.example>; IT Help Desk <support@example.com>\n"
        f"Subject: {ORIGINAL_SUBJECT}\n"
        "\n"
    ),
    "outlook header block": (
        "________________________________\n"
        "From: Dana Smith <dana@corp.example>\n"
        "Sent: Monday, November 23, 2026 08:12\n"
        "To: Alice Jones <alice@example.com>\n"
        "Cc: Bob Brown <bob@corp.example>\n"
        f"Subject: {ORIGINAL_SUBJECT}\n"
        "\n"
    ),
    "outlook block without a marker": (
        "From: Dana Smith <dana@corp.example>\n"
        "Sent: Monday, November 23, 2026 08:12\n"
        "To: Alice Jones <alice@example.com>\n"
        "Cc: Bob Brown <bob@corp.example>\n"
        f"Subject: {ORIGINAL_SUBJECT}\n"
        "\n"
    ),
    "apple mail": (
        "Begin forwarded message:\n\n"
        "> From: Dana Smith <dana@corp.example>\n"
        f"> Subject: {ORIGINAL_SUBJECT}\n"
        "> Date: 23 November 2026 at 08:12:00 CET\n"
        "> To: alice@example.com\n"
        "> Cc: bob@corp.example\n"
        ">\n"
        "> "
    ),
    "thunderbird": (
        "-------- Forwarded Message --------\n"
        f"Subject: \t{ORIGINAL_SUBJECT}\n"
        "Date: \tMon, 23 Nov 2026 08:12:00 +0100\n"
        "From: \tDana Smith <dana@corp.example>\n"
        "To: \talice@example.com\n"
        "CC: \tbob@corp.example\n"
        "\n\n"
    ),
    "german gmail": (
        "---------- Weitergeleitete Nachricht ---------\n"
        "Von: Dana Smith <dana@corp.example>\n"
        "Date: Mo., 23. Nov. 2026 um 08:12 Uhr\n"
        f"Subject: {ORIGINAL_SUBJECT}\n"
        "To: <alice@example.com>\n"
        "Cc: <bob@corp.example>\n"
        "\n\n"
    ),
    "german outlook": (
        "-----Ursprüngliche Nachricht-----\n"
        "Von: Dana Smith <dana@corp.example>\n"
        "Gesendet: Montag, 23. November 2026 08:12\n"
        "An: Alice Jones <alice@example.com>\n"
        "Cc: Bob Brown <bob@corp.example>\n"
        f"Betreff: {ORIGINAL_SUBJECT}\n"
        "\n"
    ),
    "german outlook without a marker": (
        "Von: Dana Smith <dana@corp.example>\n"
        "Gesendet: Montag, 23. November 2026 08:12\n"
        "An: Alice Jones <alice@example.com>\n"
        "Cc: Bob Brown <bob@corp.example>\n"
        f"Betreff: {ORIGINAL_SUBJECT}\n"
        "\n"
    ),
}


def inline(shape: str) -> str:
    return f"{NOTE}\n\n{SHAPES[shape]}{ORIGINAL_TEXT}\n"


def the_ticket(app: App, number: int) -> Ticket:
    with app.sessions() as s:
        ticket = s.scalar(select(Ticket).where(Ticket.number == number))
        s.expunge(ticket)
        return ticket


def participants(app: App, number: int) -> dict[str, str]:
    with app.sessions() as s:
        rows = s.execute(
            select(Person.address, Participant.role)
            .join(Participant, Participant.person_id == Person.id)
            .join(Ticket, Ticket.id == Participant.ticket_id)
            .where(Ticket.number == number)
        )
        return dict(rows.all())


def requester(app: App, number: int) -> str:
    with app.sessions() as s:
        return s.scalar(
            select(Person.address).join(Ticket, Ticket.requester_id == Person.id).where(Ticket.number == number)
        )


def on_behalf_events(app: App, number: int) -> list[Event]:
    with app.sessions() as s:
        ticket_id = s.scalar(select(Ticket.id).where(Ticket.number == number))
        return list(s.scalars(select(Event).where(Event.ticket_id == ticket_id, Event.action == "on_behalf")))


def first_message(app: App, number: int) -> Message:
    with app.sessions() as s:
        ticket_id = s.scalar(select(Ticket.id).where(Ticket.number == number))
        message = s.scalar(select(Message).where(Message.ticket_id == ticket_id).order_by(Message.id))
        _ = message.attachments
        s.expunge(message)
        return message


def assert_opened_for_dana(app: App, result, forwarder: str = "alice@example.com") -> None:
    assert result.outcome == "new_ticket", result.trace
    number = result.ticket_number
    assert requester(app, number) == "dana@corp.example"
    assert the_ticket(app, number).subject == ORIGINAL_SUBJECT
    taking_part = participants(app, number)
    assert taking_part["dana@corp.example"] == "requester"
    assert taking_part["bob@corp.example"] == "cc"
    assert taking_part[forwarder] == "watcher"
    assert not {"support@example.com", "helpdesk@example.com"} & set(taking_part)  # not our own addresses
    (ack,) = outbox(app, "ack")
    assert ack.recipients == ["dana@corp.example"]
    (event,) = on_behalf_events(app, number)
    assert event.new == f"opened on behalf of dana@corp.example by {forwarder}"
    assert event.actor == forwarder
    assert event.evidence == f"dmarc=pass header.from=example.com ({MX})"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_proven_staff_members_inline_forward_opens_the_ticket_for_the_original_sender(app: App, shape: str) -> None:
    result = ingest(app, forward_from("Alice Jones <alice@example.com>", inline(shape)), "smtp")
    assert_opened_for_dana(app, result)
    message = first_message(app, result.ticket_number)
    # The forwarder's note stays with the message, above what they forwarded.
    assert NOTE in message.text_full and ORIGINAL_TEXT in message.text_full


def test_a_forward_under_outlooks_own_subject_prefixes_gets_the_original_title(app: App) -> None:
    for prefix in ("WG: ", "TR: ", "RV: ", "Doorst: ", "Fw: "):
        raw = forward_from(
            "alice@example.com",
            inline("outlook original message").replace(ORIGINAL_SUBJECT, ""),
            subject=f"{prefix}{ORIGINAL_SUBJECT}",
        )
        result = ingest(app, raw, "smtp")
        assert requester(app, result.ticket_number) == "dana@corp.example", result.trace
        assert the_ticket(app, result.ticket_number).subject == ORIGINAL_SUBJECT


def test_the_acknowledgement_tells_the_original_sender_of_their_own_mail_not_of_the_forwarders_note(app: App) -> None:
    ingest(app, forward_from("Alice Jones <alice@example.com>", inline("gmail")), "smtp")
    (ack,) = outbox(app, "ack")
    assert ack.headers["To"] == "Dana Smith <dana@corp.example>"
    assert ORIGINAL_TEXT in ack.body
    assert NOTE not in ack.body
    assert "Alice Jones <alice@example.com> forwarded your mail" in ack.body
    (notice,) = outbox(app, "dispatcher_new")
    assert "From Dana Smith" in notice.body
    assert "Forwarded by Alice Jones <alice@example.com>" in notice.body


def test_the_dispatcher_forwarding_from_our_own_address_opens_the_ticket_for_the_employee(app: App) -> None:
    result = ingest(app, forward_from("Dispatcher <dispatch@example.com>", inline("outlook original message")), "smtp")
    assert_opened_for_dana(app, result, forwarder="dispatch@example.com")


def test_an_html_only_forward_opens_the_ticket_for_the_original_sender(app: App) -> None:
    html = (
        f"<html><body><p>{NOTE}</p>"
        '<div class="moz-forward-container">-------- Forwarded Message --------'
        '<table class="moz-email-headers-table"><tbody>'
        f"<tr><th>Subject: </th><td>{ORIGINAL_SUBJECT}</td></tr>"
        "<tr><th>Date: </th><td>Mon, 23 Nov 2026 08:12:00 +0100</td></tr>"
        '<tr><th>From: </th><td>Dana Smith <a href="mailto:dana@corp.example">&lt;dana@corp.example&gt;</a></td></tr>'
        '<tr><th>To: </th><td><a href="mailto:alice@example.com">alice@example.com</a></td></tr>'
        '<tr><th>CC: </th><td>Bob Brown <a href="mailto:bob@corp.example">&lt;bob@corp.example&gt;</a></td></tr>'
        f"</tbody></table><br><div>{ORIGINAL_TEXT}</div></div></body></html>"
    )
    result = ingest(app, forward_from("alice@example.com", None, html=html), "smtp")
    assert_opened_for_dana(app, result)


def attached_forward(*, proven: bool = True) -> bytes:
    original = EmailMessage(policy=SMTP)
    original["From"] = "Dana Smith <dana@corp.example>"
    original["To"] = "Alice Jones <alice@example.com>"
    original["Cc"] = "Bob Brown <bob@corp.example>"
    original["Subject"] = ORIGINAL_SUBJECT
    original["Date"] = "Mon, 23 Nov 2026 08:12:00 +0100"
    original["Message-ID"] = "<original-1@corp.example>"
    original.set_content(ORIGINAL_TEXT + "\n")
    original.add_attachment(b"%PDF-1.4 test", maintype="application", subtype="pdf", filename="error-page.pdf")
    outer = EmailMessage(policy=SMTP)
    outer["From"] = "Alice Jones <alice@example.com>"
    outer["To"] = "support@example.com"
    outer["Subject"] = f"FW: {ORIGINAL_SUBJECT}"
    outer["Date"] = "Mon, 23 Nov 2026 09:00:00 +0000"
    outer["Message-ID"] = "<forward-1@example.com>"
    outer.set_content(NOTE + "\n")
    outer.add_attachment(original, filename="Plotter prints twice.eml")
    raw = outer.as_bytes()
    return (PROVEN + raw) if proven else raw


def test_a_mail_attached_as_message_rfc822_is_the_first_message_of_the_original_senders_ticket(app: App) -> None:
    result = ingest(app, attached_forward(), "smtp")
    assert_opened_for_dana(app, result)
    message = first_message(app, result.ticket_number)
    # The original's headers, text and files, not the forwarder's wrapper; the note kept above.
    assert message.from_addr == "dana@corp.example"
    assert message.subject == ORIGINAL_SUBJECT
    assert message.cc_addrs == ["bob@corp.example"]
    assert [a.filename for a in message.attachments] == ["error-page.pdf"]
    assert message.text_full.startswith(NOTE)
    assert ORIGINAL_TEXT in message.text_full
    (ack,) = outbox(app, "ack")
    assert ack.headers["In-Reply-To"] == "<original-1@corp.example>"  # threads under Dana's own mail
    assert NOTE not in ack.body and ORIGINAL_TEXT in ack.body


def test_an_unproven_staff_forward_is_an_ordinary_ticket_for_the_sender(app: App) -> None:
    result = ingest(app, forward_from("alice@example.com", inline("gmail"), proven=False), "smtp")
    assert says(result, "not proven: an ordinary new ticket for the sender")
    number = result.ticket_number
    assert requester(app, number) == "alice@example.com"
    assert "dana@corp.example" not in participants(app, number)
    assert not on_behalf_events(app, number)
    assert [a.recipients for a in outbox(app, "ack")] == [["alice@example.com"]]


@pytest.mark.parametrize(
    "authentication_results",
    [
        "mx.attacker.example; dmarc=pass header.from=example.com",  # an authserv-id we do not trust
        f"{MX}; dkim=pass header.d=attacker.example",  # a signature of another domain
        f"{MX}; dmarc=fail header.from=example.com",
    ],
)
def test_a_forged_staff_from_opens_no_ticket_in_someone_elses_name(app: App, authentication_results: str) -> None:
    for raw in (forward_from("alice@example.com", inline("gmail"), proven=False), attached_forward(proven=False)):
        forged = f"Authentication-Results: {authentication_results}\r\n".encode() + raw
        result = ingest(app, forged, "smtp")
        assert says(result, "from alice@example.com, who is not proven")  # seen as a forward, and refused as one
        assert requester(app, result.ticket_number) == "alice@example.com", result.trace
        assert not on_behalf_events(app, result.ticket_number)
    assert all("dana@corp.example" not in row.recipients for row in outbox(app))


def test_a_requesters_forward_is_their_own_ticket(app: App) -> None:
    # Proven, but not staff: forwarding on someone else's behalf is the desk's to do.
    raw = f"Authentication-Results: {MX}; dmarc=pass header.from=corp.example\r\n".encode() + mail(
        sender="Carl <carl@corp.example>", subject=f"Fwd: {ORIGINAL_SUBJECT}", body=inline("gmail")
    )
    result = ingest(app, raw, "smtp")
    assert requester(app, result.ticket_number) == "carl@corp.example"
    # The same forward by proven staff is Dana's.
    by_staff = ingest(app, forward_from("alice@example.com", inline("gmail"), subject="Fwd: again"), "smtp")
    assert requester(app, by_staff.ticket_number) == "dana@corp.example"


def test_a_reply_quoting_in_outlooks_shape_is_not_a_forward(app: App) -> None:
    raw = forward_from("alice@example.com", inline("outlook original message"), subject=f"RE: {ORIGINAL_SUBJECT}")
    result = ingest(app, raw, "smtp")
    assert says(result, "under a reply's subject: not a forward")
    assert requester(app, result.ticket_number) == "alice@example.com"


def test_a_forward_of_a_robots_mail_is_the_forwarders_ticket(app: App) -> None:
    body = inline("gmail").replace("Dana Smith <dana@corp.example>", "GitHub <noreply@github.com>")
    result = ingest(app, forward_from("alice@example.com", body), "smtp")
    assert says(result, "from a robot's address noreply@github.com")
    assert requester(app, result.ticket_number) == "alice@example.com"


def test_a_forward_that_threads_into_a_ticket_is_a_message_on_it(app: App) -> None:
    first = ingest(app, forward_from("dispatch@example.com", inline("gmail")), "smtp")
    tag = f"[HD #{first.ticket_number}]"
    again = ingest(app, forward_from("dispatch@example.com", inline("apple mail"), subject=f"Fwd: {tag} more"), "smtp")
    assert again.outcome == "reply" and again.ticket_number == first.ticket_number
    assert len(outbox(app, "ack")) == 1


# -- real forwarded mails from the shared corpus (MAILGATE_CORPUS) ---------------------------

# (path, the original's sender, HTML?)
CORPUS = [
    ("discourse-email_reply_trimmer/emails/forwarded_gmail.txt", "foo@discourse.org", False),
    ("discourse-email_reply_trimmer/emails/forwarded_apple.txt", "foo@discourse.org", False),
    ("discourse-email_reply_trimmer/emails/forwarded_message.txt", "foo@bar.com", False),
    ("discourse-email_reply_trimmer/emails/embedded_email_german_3.txt", "team@discourse.org", False),
    ("quotequail/gmail_forward.html", "foo@bar.example", True),
    ("quotequail/apple_forward.html", "foo@bar.example", True),
    ("quotequail/thunderbird_forward.html", "johndoe@example.com", True),
    ("quotequail/mailru_forward.html", "ivanivanov@example.com", True),
]


@pytest.mark.parametrize(("path", "original", "html"), CORPUS, ids=[c[0].split("/")[-1] for c in CORPUS])
def test_real_forwards_from_the_corpus(app: App, corpus: Path, path: str, original: str, html: bool) -> None:
    text = (corpus / path).read_text(encoding="utf-8")
    body, markup = (None, text) if html else (text, None)
    result = ingest(app, forward_from("alice@example.com", body, html=markup, subject="Fwd: see below"), "smtp")
    assert requester(app, result.ticket_number) == original, result.trace
    assert [a.recipients for a in outbox(app, "ack")] == [[original]]


def test_a_real_outlook_forward_from_the_corpus(app: App, corpus: Path) -> None:
    # django-helpdesk's mail: a Thunderbird mail quoting Outlook's "-----Original Message-----",
    # sent here by alice (its From replaced) and proven; its original is a robot's.
    raw = (corpus / "django-helpdesk/forwarded-message.eml").read_bytes()
    raw = raw.replace(b"From: The Sender <sender@domain.tld>", b"From: Alice <alice@example.com>")
    raw = raw.replace(b"From: GitHub <noreply@github.com>", b"From: Dana Smith <dana@corp.example>")
    result = ingest(app, PROVEN + raw, "smtp")
    assert requester(app, result.ticket_number) == "dana@corp.example", result.trace
    assert the_ticket(app, result.ticket_number).subject.startswith("[GitHub API] Update notice")


def test_the_acknowledgement_is_in_the_original_senders_language(tmp_path, db_url, clock) -> None:
    settings = make_settings(
        tmp_path,
        db_url,
        acknowledgements={"trusted_authserv_ids": [MX]},
        requesters=[{"address": "dana@corp.example", "name": "Dana Schmidt", "language": "de"}],
    )
    app = App.build(settings, clock=clock)
    try:
        ingest(app, forward_from("Alice Jones <alice@example.com>", inline("german outlook")), "smtp")
        (ack,) = outbox(app, "ack")
        assert ack.recipients == ["dana@corp.example"]
        assert "Alice Jones <alice@example.com> hat Ihre Mail an das Helpdesk weitergeleitet" in ack.body
    finally:
        app.close()
