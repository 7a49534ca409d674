"""The staff relay through ingest(): who gets which mail when the requester's side and the desk
write on a ticket, read as the recipients' clients read it (the rendered bytes, parsed)."""

from __future__ import annotations

import email
import email.header
import email.utils
from collections.abc import Callable
from datetime import timedelta
from email.message import EmailMessage
from email.policy import default

import pytest
from sqlalchemy import select

from mailgate import people, tickets, tokens
from mailgate.app import App
from mailgate.ingest import pipeline
from mailgate.ingest.history import History
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.pipeline import ingest
from mailgate.models import Event, Message, Outbox, OutboxState, Person, Status, Ticket
from mailgate.outgoing.compose import render
from mailgate.outgoing.outbox import deliver_due
from mailgate.outgoing.sender import MaildirSink
from mailgate.relay.assignment import tell_assignee
from tests.conftest import make_settings
from tests.mails import mail
from tests.test_ingest import messages, new_ticket, outbox, ticket
from tests.test_threading_rules import says

MX = "mx.example.com"
PDF = b"%PDF-1.4 the printer's service manual\n" * 20
PNG = b"\x89PNG\r\n\x1a\n a screenshot of the jam" * 10


def desk(tmp_path, db_url, clock, **overrides: object) -> App:
    values: dict[str, object] = {
        "acknowledgements": {"trusted_authserv_ids": [MX]},
        "staff": [
            {"address": "alice@example.com", "name": "Alice Jones", "teams": ["network"]},
            {"address": "bert@example.com", "name": "Bert Berger", "teams": ["print"], "language": "de"},
            {"address": "dispatch@example.com", "name": "Dispatcher", "role": "dispatcher"},
        ],
    }
    values.update(overrides)
    return App.build(make_settings(tmp_path, db_url, **values), clock=clock)


@pytest.fixture
def app(tmp_path, db_url, clock):
    application = desk(tmp_path, db_url, clock)
    yield application
    application.close()


def parsed(app: App, row: Outbox) -> EmailMessage:
    """The row as the recipient's client reads it."""
    return email.message_from_bytes(render(row, app.store), policy=default)


def text_of(msg: EmailMessage) -> str:
    return msg.get_body(preferencelist=("plain",)).get_content()


def files_of(msg: EmailMessage) -> dict[str, bytes]:
    return {part.get_filename(): part.get_content() for part in msg.iter_attachments()}


def reply_address(row: Outbox) -> str:
    return email.utils.parseaddr(row.headers["Reply-To"])[1]


def ids(value: str | None) -> list[str]:
    return (value or "").split()


def assign(app: App, number: int, address: str = "alice@example.com", *, notify: bool = True) -> None:
    """What #assign will do: the ticket is theirs, and (notify) they get the notice."""
    with app.sessions() as s, s.begin():
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        person = people.person_for(s, app.settings, address, "", app.clock.now())
        tickets.assign(s, t, person, actor="dispatch@example.com", channel="test", now=app.clock.now())
        if notify:
            assert tell_assignee(s, app, t, person, "Dispatcher <dispatch@example.com>", app.clock.now())


def answer_from_alice(app: App, number: int, body: str, **kwargs: object):
    """Alice answers the assignment notice: to its reply address, which proves it is her."""
    notice = outbox(app, "assigned")[-1]
    raw = mail(
        sender="Alice Jones <alice@example.com>",
        to=reply_address(notice),
        subject=f"Re: [HD #{number}] Printer on 3rd floor jams",
        body=body,
        headers={"In-Reply-To": notice.message_id, "References": notice.message_id},
        **kwargs,
    )
    return ingest(app, raw, "smtp")


def person(app: App, address: str) -> Person:
    with app.sessions() as s:
        return s.scalar(select(Person).where(Person.address == address))


def with_step(monkeypatch: pytest.MonkeyPatch, step: Callable[[Incoming], None]) -> None:
    """A step before relay doing what the commands' execute does (not on this branch): set the
    fields relay reads."""
    steps = list(pipeline.STEPS)
    steps.insert(steps.index(pipeline.relay), step)
    monkeypatch.setattr(pipeline, "STEPS", tuple(steps))


# -- the assignment notice -------------------------------------------------------------------------


def test_the_assignee_gets_the_thread_so_far_its_files_and_how_to_answer(app: App, clock) -> None:
    number = new_ticket(
        app, body="The printer jams on every second page.\n", attachments=[("jam.png", "image/png", PNG)]
    )
    clock.advance(timedelta(minutes=5))
    quoted = (
        "It is the HP on the left.\n\n"
        "On Mon, 23 Nov 2026 at 09:00, Help Desk <support@example.com> wrote:\n> we opened it\n"
    )
    ingest(app, mail(subject=f"Re: [HD #{number}] Printer", body=quoted), "smtp")
    assign(app, number)

    (row,) = outbox(app, "assigned")
    msg = parsed(app, row)
    assert msg["To"].addresses[0].addr_spec == "alice@example.com"
    assert f"[HD #{number}]" in msg["Subject"]
    token = tokens.verify(app.secret, tokens.find_tokens(reply_address(row))[0])
    assert token == tokens.ReplyToken(number, person(app, "alice@example.com").id)
    text = text_of(msg)
    assert "Dispatcher <dispatch@example.com> assigned" in text
    assert "First answer due" in text
    first, second = text.index("every second page"), text.index("HP on the left")
    assert first < second
    assert "we opened it" not in text  # each message's new text, not the quotes
    assert "#note" in text
    assert msg.get_content_type() == "multipart/mixed"
    assert files_of(msg) == {"jam.png": PNG}
    assert ids(msg["References"])[-1] == ids(msg["In-Reply-To"])[-1]


def test_the_assignment_notice_marks_an_internal_note_and_is_in_the_assignees_language(app: App) -> None:
    number = new_ticket(app)
    proven = {"Authentication-Results": f"{MX}; dmarc=pass header.from=example.com"}
    body = "Bert, the toner is in room 3.\n"
    ingest(app, mail(sender="dispatch@example.com", subject=f"Re: [HD #{number}] x", body=body, headers=proven), "smtp")
    note_id = messages(app, number)[-1].id
    with app.sessions() as s, s.begin():
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        bert = people.person_for(s, app.settings, "bert@example.com", "", app.clock.now())
        cause = s.get(Message, note_id)
        tell_assignee(s, app, t, bert, "Dispatcher", app.clock.now(), cause=cause, cause_internal=True)
    text = text_of(parsed(app, outbox(app, "assigned")[0]))
    assert "hat Ihnen das Ticket" in text
    heading = text[: text.index("toner is in room 3")].rsplit("---", 1)[-1]
    assert "INTERNE NOTIZ" in heading
    assert "INTERNE NOTIZ" not in text[: text.index("every second page")]


def assigning(address: str, when: Callable[[Incoming], bool]) -> Callable[[Incoming], None]:
    """What a routing rule, #assign or #take do: the ticket is `address`'s, and relay is told."""

    def step(item: Incoming) -> None:
        if when(item):
            assignee = people.person_for(item.session, item.app.settings, address, "", item.now)
            tickets.assign(item.session, item.ticket, assignee, actor="t", channel="t", now=item.now)
            item.assigned = assignee
            if item.mail.text.startswith("#"):
                item.text_after_commands = item.mail.text.partition("\n")[2].strip()

    return step


def test_whoever_assigns_in_a_mail_the_assignee_is_told_by_whom(app: App, monkeypatch) -> None:
    with_step(monkeypatch, assigning("alice@example.com", lambda item: item.mail.subject == "VPN down"))
    routed = new_ticket(app, subject="VPN down", body="No VPN since 8:00.\n")
    (notice,) = outbox(app, "assigned")
    assert "the desk's routing rules assigned" in text_of(parsed(app, notice))

    number = new_ticket(app)
    dispatcher_notice = outbox(app, "dispatcher_new")[-1]
    monkeypatch.undo()
    with_step(monkeypatch, assigning("alice@example.com", lambda item: item.mail.text.startswith("#assign")))
    to = reply_address(dispatcher_notice)
    ingest(
        app, mail(sender="dispatch@example.com", to=to, subject=f"Re: [HD #{number}] x", body="#assign alice\n"), "smtp"
    )
    notice = outbox(app, "assigned")[-1]
    assert notice.ticket_id != outbox(app, "assigned")[0].ticket_id and routed != number
    text = text_of(parsed(app, notice))
    assert "Dispatcher <dispatch@example.com> assigned" in text
    assert "#assign" not in text.split("The thread so far")[1].split("How to answer")[0]


def test_who_takes_a_ticket_themself_gets_no_notice(app: App, monkeypatch) -> None:
    number = new_ticket(app)
    assign(app, number, notify=False)
    with_step(monkeypatch, assigning("alice@example.com", lambda item: item.mail.text.startswith("#take")))
    raw = mail(sender="alice@example.com", subject=f"Re: [HD #{number}] x", body="#take\n")
    ingest(app, f"Authentication-Results: {MX}; dmarc=pass header.from=example.com\r\n".encode() + raw, "smtp")
    assert outbox(app, "assigned") == []


# -- a staff member's answer ---------------------------------------------------------------------


def test_a_proven_answer_goes_to_the_requester_and_the_cc_threaded_with_its_files(app: App, clock) -> None:
    number = new_ticket(app, headers={"Cc": "Bob Miller <bob@example.com>"})
    assign(app, number)
    clock.advance(timedelta(minutes=40))
    body = "Please switch it off and on again.\n\nAlice\n\nOn Mon, 23 Nov 2026, Help Desk wrote:\n> Assigned to you\n"
    result = answer_from_alice(app, number, body, attachments=[("manual.pdf", "application/pdf", PDF)])
    assert result.outcome == "reply"

    answers = outbox(app, "answer")
    assert sorted(r.recipients[0] for r in answers) == ["bob@example.com", "dana@example.com"]
    assert len({r.message_id for r in answers}) == 2
    ack = outbox(app, "ack")[0]
    to_dana = next(r for r in answers if r.recipients == ["dana@example.com"])
    msg = parsed(app, to_dana)
    assert msg["From"].addresses[0].display_name == "Alice Jones via IT Help Desk"
    assert msg["From"].addresses[0].addr_spec == "support@example.com"
    assert f"[HD #{number}]" in msg["Subject"]
    token = tokens.verify(app.secret, tokens.find_tokens(reply_address(to_dana))[0])
    assert token == tokens.ReplyToken(number, person(app, "dana@example.com").id)
    alices = messages(app, number)[-1].message_id
    assert ids(msg["In-Reply-To"]) == [f"<{alices}>"]
    assert ack.message_id in ids(msg["References"])
    # Bob got no mail of ours yet: his client threads it by the request he was copied on.
    request = messages(app, number)[0].message_id
    to_bob = parsed(app, next(r for r in answers if r.recipients == ["bob@example.com"]))
    assert ids(to_bob["References"]) == [f"<{request}>", f"<{alices}>"]
    text = text_of(msg)
    assert "switch it off and on again" in text and "Assigned to you" not in text
    assert files_of(msg) == {"manual.pdf": PDF}
    assert not [r for r in outbox(app) if r.recipients == ["alice@example.com"] and r.kind == "answer"]

    t = ticket(app, number)
    assert t.first_response_at == clock.now()
    assert t.status == Status.PENDING
    with app.sessions() as s:
        first = s.scalar(select(Event).where(Event.action == "first_response"))
        assert first.actor == "alice@example.com" and "reply token issued to alice@example.com" in first.evidence


def test_the_relayed_answer_is_delivered_as_a_mail_with_its_attachment(app: App, tmp_path) -> None:
    number = new_ticket(app)
    assign(app, number)
    answer_from_alice(app, number, "The manual is attached.\n", attachments=[("manual.pdf", "application/pdf", PDF)])
    sink = tmp_path / "out"
    with app.sessions() as s:
        report = deliver_due(s, MaildirSink(sink), app.clock.now(), 5, store=app.store)
    assert report.dead == 0 and report.sent == len(outbox(app))
    delivered = [email.message_from_bytes(p.read_bytes(), policy=default) for p in (sink / "new").iterdir()]
    (answer,) = [m for m in delivered if "The manual is attached." in text_of(m)]
    assert files_of(answer) == {"manual.pdf": PDF}


def test_an_answer_proven_by_the_trusted_mtas_dmarc_pass_is_relayed(app: App) -> None:
    number = new_ticket(app)
    assign(app, number, notify=False)
    raw = mail(sender="Alice Jones <alice@example.com>", subject=f"Re: [HD #{number}] x", body="Fixed it.\n")
    ingest(app, f"Authentication-Results: {MX}; dmarc=pass header.from=example.com\r\n".encode() + raw, "smtp")
    assert [r.recipients for r in outbox(app, "answer")] == [["dana@example.com"]]


def test_an_unproven_staff_answer_is_kept_not_sent_and_its_author_told(app: App, clock) -> None:
    number = new_ticket(app)
    assign(app, number, notify=False)
    raw = mail(
        sender="Alice Jones <alice@example.com>", subject=f"Re: [HD #{number}] x", body="Send me your password.\n"
    )
    result = ingest(app, raw, "smtp")
    assert result.outcome == "reply" and says(result, "kept, not relayed")
    assert outbox(app, "answer") == []
    t = ticket(app, number)
    assert t.first_response_at is None and t.status == Status.NEW
    (kept,) = outbox(app, "answer_kept")
    assert kept.recipients == ["alice@example.com"]
    text = text_of(parsed(app, kept))
    assert "NOT sent" in text and "reply to a mail" in text
    # A forger mailing as alice again and again makes no more than the acknowledgement limit.
    for n in range(6):
        ingest(app, mail(sender="alice@example.com", subject=f"Re: [HD #{number}] x", body=f"Forged {n}.\n"), "smtp")
    assert len(outbox(app, "answer_kept")) == app.settings.limits.acks_per_sender
    assert outbox(app, "answer") == []


def test_an_internal_note_and_a_mail_of_commands_alone_are_relayed_to_nobody(app: App, monkeypatch) -> None:
    number = new_ticket(app)
    assign(app, number)

    def note(item: Incoming) -> None:
        if item.sender.address == "alice@example.com":
            item.internal = "#note" in item.mail.text
            item.text_after_commands = item.mail.text.replace("#note", "").replace("#priority high", "").strip()

    with_step(monkeypatch, note)
    answer_from_alice(app, number, "#note\nThe requester is the CEO, be quick.\n")
    answer_from_alice(app, number, "#priority high\n")
    assert outbox(app, "answer") == []
    assert ticket(app, number).first_response_at is None


def test_an_answer_that_resolves_the_ticket_says_so_and_no_second_mail(app: App, monkeypatch) -> None:
    number = new_ticket(app)
    assign(app, number)

    def close(item: Incoming) -> None:
        if item.sender.address == "alice@example.com" and item.proof is not None:
            tickets.set_status(item.session, item.ticket, Status.RESOLVED, actor="alice", channel="t", now=item.now)
            item.status_set, item.text_after_commands = True, item.mail.text.replace("#status resolved", "").strip()

    with_step(monkeypatch, close)
    answer_from_alice(app, number, "#status resolved\nReplaced the fuser unit.\n")
    (answer,) = outbox(app, "answer")
    assert "now resolved" in text_of(parsed(app, answer))
    assert outbox(app, "closed") == []
    assert ticket(app, number).status == Status.RESOLVED  # a command's status is not moved to pending


def test_a_status_the_answer_set_by_command_is_not_moved_to_pending(app: App, monkeypatch) -> None:
    number = new_ticket(app)
    assign(app, number)

    def status_open(item: Incoming) -> None:
        if item.mail.text.startswith("#status open"):
            tickets.set_status(item.session, item.ticket, Status.OPEN, actor="alice", channel="t", now=item.now)
            item.status_set, item.text_after_commands = True, item.mail.text.partition("\n")[2].strip()

    with_step(monkeypatch, status_open)
    answer_from_alice(app, number, "#status open\nI am ordering the part.\n")
    assert len(outbox(app, "answer")) == 1
    assert ticket(app, number).status == Status.OPEN


# -- the close notice -----------------------------------------------------------------------------


def test_the_requester_is_told_when_someone_else_closes_the_ticket(app: App, monkeypatch) -> None:
    number = new_ticket(app)
    assign(app, number)

    def close(item: Incoming) -> None:
        if item.mail.text.startswith("#close"):
            tickets.set_status(item.session, item.ticket, Status.CLOSED, actor="x", channel="t", now=item.now)
            item.status_set, item.text_after_commands = True, ""
            item.close_text = item.mail.text.splitlines()[0].removeprefix("#close").strip()

    with_step(monkeypatch, close)
    answer_from_alice(app, number, "#close toner replaced\n")
    (notice,) = outbox(app, "closed")
    assert notice.recipients == ["dana@example.com"]
    text = text_of(parsed(app, notice))
    assert "toner replaced" in text and f"within {app.settings.tickets.reopen_window_days} days" in text
    assert outbox(app, "answer") == []
    # The requester closing it themself hears nothing of it.
    other = new_ticket(app, subject="Second problem")
    ingest(app, mail(subject=f"Re: [HD #{other}] Second problem", body="#close solved myself\n"), "smtp")
    assert len(outbox(app, "closed")) == 1


# -- the requester's reply ------------------------------------------------------------------------

QUOTES = {
    "outlook": (
        "The jam is back since this morning.\n\n"
        "-----Original Message-----\nFrom: Alice Jones via IT Help Desk <support@example.com>\n"
        "Sent: Monday, November 23, 2026 10:00 AM\nTo: Dana Smith <dana@example.com>\n"
        "Subject: RE: [HD #1] Printer\n\nPlease switch it off and on again.\n"
    ),
    "gmail": (
        "The jam is back since this morning.\n\n"
        "On Mon, 23 Nov 2026 at 10:00, Alice Jones via IT Help Desk <support@example.com> wrote:\n\n"
        "> Please switch it off and on again.\n"
    ),
    "german": (
        "The jam is back since this morning.\n\n"
        "Am Mo., 23. Nov. 2026 um 10:00 Uhr schrieb Alice Jones via IT Help Desk <support@example.com>:\n"
        "> Please switch it off and on again.\n"
    ),
    "mobile": (
        "The jam is back since this morning.\n\nSent from my iPhone\n\n"
        "> On 23 Nov 2026, at 10:00, Alice Jones via IT Help Desk <support@example.com> wrote:\n"
        ">\n> Please switch it off and on again.\n"
    ),
}


@pytest.mark.parametrize("shape", QUOTES)
def test_the_requesters_reply_reaches_the_assignee_without_the_quote(app: App, clock, shape: str) -> None:
    number = new_ticket(app)
    assign(app, number)
    answer_from_alice(app, number, "Please switch it off and on again.\n")
    assert ticket(app, number).status == Status.PENDING
    clock.advance(timedelta(hours=2))
    to_dana = outbox(app, "answer")[0]
    raw = mail(
        to=reply_address(to_dana),
        subject=f"RE: [HD #{number}] Printer on 3rd floor jams",
        body=QUOTES[shape],
        headers={"In-Reply-To": to_dana.message_id},
        attachments=[("jam.png", "image/png", PNG)],
    )
    ingest(app, raw, "smtp")

    (row,) = outbox(app, "requester_reply")
    assert row.recipients == ["alice@example.com"]
    msg = parsed(app, row)
    text = text_of(msg)
    assert "The jam is back since this morning." in text
    assert "switch it off and on again" not in text
    assert files_of(msg) == {"jam.png": PNG}
    notice = outbox(app, "assigned")[0]
    dana_id = messages(app, number)[-1].message_id
    assert ids(msg["In-Reply-To"]) == [f"<{dana_id}>"]
    assert notice.message_id in ids(msg["References"])
    token = tokens.verify(app.secret, tokens.find_tokens(reply_address(row))[0])
    assert token == tokens.ReplyToken(number, person(app, "alice@example.com").id)
    assert ticket(app, number).status == Status.OPEN


def test_an_html_only_reply_reaches_the_assignee_as_text_without_the_quote(app: App) -> None:
    number = new_ticket(app)
    assign(app, number)
    html = (
        "<html><body><div dir='ltr'>The jam is back since this <b>morning</b>.</div><br>"
        "<div class='gmail_quote'><div dir='ltr'>On Mon, 23 Nov 2026 at 10:00, Alice Jones via IT Help Desk "
        "&lt;support@example.com&gt; wrote:<br></div>"
        "<blockquote class='gmail_quote'>Please switch it off and on again.</blockquote></div></body></html>"
    )
    ingest(app, mail(subject=f"Re: [HD #{number}] Printer", body=None, html=html), "smtp")
    text = text_of(parsed(app, outbox(app, "requester_reply")[0]))
    assert "The jam is back since this" in text and "morning" in text
    assert "switch it off" not in text and "<div" not in text


def test_a_reply_while_unassigned_goes_to_the_dispatcher_and_a_new_ticket_stays_new(app: App) -> None:
    number = new_ticket(app)
    ingest(app, mail(subject=f"Re: [HD #{number}] Printer", body="It is the HP on the left.\n"), "smtp")
    (row,) = outbox(app, "requester_reply")
    assert row.recipients == ["dispatch@example.com"]
    assert "#assign" in text_of(parsed(app, row))
    assert ticket(app, number).status == Status.NEW


def test_a_cc_answering_a_pending_ticket_reaches_the_assignee_and_opens_it(app: App) -> None:
    number = new_ticket(app, headers={"Cc": "bob@example.com"})
    assign(app, number)
    answer_from_alice(app, number, "Which floor exactly, Bob?\n")
    ingest(app, mail(sender="bob@example.com", subject=f"Re: [HD #{number}] x", body="Third floor, east.\n"), "smtp")
    (row,) = outbox(app, "requester_reply")
    assert row.recipients == ["alice@example.com"] and "(on Cc)" in text_of(parsed(app, row))
    assert ticket(app, number).status == Status.OPEN


def test_files_over_the_relay_bound_are_named_not_attached(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, relay={"max_attachment_bytes": 1000})
    try:
        number = new_ticket(app)
        assign(app, number)
        files = [("small.png", "image/png", PNG[:300]), ("manual.pdf", "application/pdf", PDF)]
        ingest(app, mail(subject=f"Re: [HD #{number}] x", body="Two files.\n", attachments=files), "smtp")
        msg = parsed(app, outbox(app, "requester_reply")[0])
        assert files_of(msg) == {"small.png": PNG[:300]}
        assert "Not attached" in text_of(msg) and "manual.pdf" in text_of(msg)
    finally:
        app.close()


# -- what is never relayed -----------------------------------------------------------------------


def test_nothing_is_relayed_for_automatic_mail_duplicates_or_imported_history(app: App) -> None:
    number = new_ticket(app)
    assign(app, number)
    subject = f"Re: [HD #{number}] Printer"
    ingest(app, mail(subject=f"Automatic reply: {subject}", headers={"Auto-Submitted": "auto-replied"}), "smtp")
    assert outbox(app, "requester_reply") == []
    reply = mail(subject=subject, body="Still jams.\n", message_id="<once@client.example.org>")
    ingest(app, reply, "smtp")
    assert ingest(app, reply, "smtp").outcome == "duplicate"
    assert len(outbox(app, "requester_reply")) == 1
    ingest(app, mail(subject=subject, body="An old reply.\n"), "import", history=History())
    assert len(outbox(app, "requester_reply")) == 1


def test_nothing_is_relayed_to_an_undeliverable_assignee(app: App) -> None:
    number = new_ticket(app)
    assign(app, number)
    with app.sessions() as s, s.begin():
        alice = s.scalar(select(Person).where(Person.address == "alice@example.com"))
        alice.undeliverable_since = app.clock.now()
    result = ingest(app, mail(subject=f"Re: [HD #{number}] x", body="Any news?\n"), "smtp")
    assert outbox(app, "requester_reply") == [] and says(result, "cannot be mailed")


def test_a_row_whose_file_left_the_store_is_dead_not_stuck(app: App, tmp_path) -> None:
    number = new_ticket(app)
    assign(app, number)
    answer_from_alice(app, number, "See the manual.\n", attachments=[("manual.pdf", "application/pdf", PDF)])
    row = outbox(app, "answer")[0]
    app.store.discard(row.attachments[0]["sha256"])
    with app.sessions() as s:
        report = deliver_due(s, MaildirSink(tmp_path / "out"), app.clock.now(), 5, store=app.store)
    assert report.dead == 1
    with app.sessions() as s:
        assert s.get(Outbox, row.id).state == OutboxState.DEAD


# -- every relay template, in German too ----------------------------------------------------------


def test_a_german_desk_writes_every_relay_mail_in_german(tmp_path, db_url, clock, monkeypatch) -> None:
    app = desk(tmp_path, db_url, clock, tickets={"language": "de"})
    try:
        number = new_ticket(app)
        assign(app, number)
        answer_from_alice(app, number, "Bitte den Drucker neu starten.\n")
        ingest(app, mail(subject=f"AW: [HD #{number}] x", body="Hat nicht geholfen.\n"), "smtp")
        ingest(app, mail(sender="alice@example.com", subject=f"AW: [HD #{number}] x", body="Gefälscht.\n"), "smtp")

        def close(item: Incoming) -> None:
            if item.mail.text.startswith("#close"):
                tickets.set_status(item.session, item.ticket, Status.CLOSED, actor="x", channel="t", now=item.now)
                item.status_set, item.text_after_commands, item.close_text = True, "", "Trommel getauscht"

        with_step(monkeypatch, close)
        answer_from_alice(app, number, "#close\n")
        expected = {
            "assigned": "hat Ihnen das Ticket",
            "answer": "Antworten Sie auf diese Mail",
            "requester_reply": "hat zum Ticket",
            "answer_kept": "NICHT an die anfragende Person gesendet",
            "closed": "Trommel getauscht",
        }
        for kind, words in expected.items():
            (row,) = outbox(app, kind)
            assert words in text_of(parsed(app, row)), kind
        assert parsed(app, outbox(app, "closed")[0])["Subject"].endswith("Geschlossen: Printer on 3rd floor jams")
    finally:
        app.close()


def test_the_requester_is_answered_in_the_language_their_request_asked_for(app: App, monkeypatch) -> None:
    number = new_ticket(app, headers={"Accept-Language": "de-DE, en;q=0.5"})
    assert "Guten Tag" in text_of(parsed(app, outbox(app, "ack")[0]))
    assign(app, number)
    answer_from_alice(app, number, "Bitte neu starten.\n")
    assert "Antworten Sie auf diese Mail" in text_of(parsed(app, outbox(app, "answer")[0]))
    assert "How to answer" in text_of(parsed(app, outbox(app, "assigned")[0]))  # Alice reads English


def test_a_huge_reply_with_a_hostile_name_is_relayed_bounded(app: App) -> None:
    # A name that decodes to a bidi override and a line break with a header after it.
    hostile = b"From: =?utf-8?q?Dana_=E2=80=AESmith=0D=0ABcc=3A_x=40evil.example?= <dana@example.com>"
    first = mail().replace(b"From: Dana Smith <dana@example.com>", hostile)
    number = ingest(app, first, "smtp").ticket_number
    assert ticket(app, number).requester_id == person(app, "dana@example.com").id
    assign(app, number)
    body = "The jam is back.\n" + "word " * 400_000
    reply = mail(subject=f"Re: [HD #{number}] x", body=body).replace(b"From: Dana Smith <dana@example.com>", hostile)
    result = ingest(app, reply, "smtp")
    assert says(result, "relayed to alice@example.com"), result.trace
    (row,) = outbox(app, "requester_reply")
    data = render(row, app.store)
    assert len(data) <= app.settings.outgoing.max_mail_bytes
    msg = email.message_from_bytes(data, policy=default)
    assert msg["Bcc"] is None and [a.addr_spec for a in msg["To"].addresses] == ["alice@example.com"]
    assert "\u202e" not in str(email.header.make_header(email.header.decode_header(msg["From"])))
    assert "The jam is back." in text_of(msg)


def test_an_unreadable_store_is_retried_and_the_mails_without_files_still_go(app: App, tmp_path) -> None:
    number = new_ticket(app)
    assign(app, number)
    answer_from_alice(app, number, "See the manual.\n", attachments=[("manual.pdf", "application/pdf", PDF)])
    row = outbox(app, "answer")[0]
    path = app.store.path_for(row.attachments[0]["sha256"])
    data = path.read_bytes()
    path.unlink()
    path.mkdir()  # reading it fails, as on a mount that is away, but not as "no such file"
    with app.sessions() as s:
        report = deliver_due(s, MaildirSink(tmp_path / "out"), app.clock.now(), 5, store=app.store)
    assert (report.retried, report.dead, report.sent) == (1, 0, len(outbox(app)) - 1)
    path.rmdir()
    path.write_bytes(data)
    with app.sessions() as s:
        later = app.clock.now() + timedelta(hours=1)
        assert deliver_due(s, MaildirSink(tmp_path / "out"), later, 5, store=app.store).sent == 1
