"""ingest() end to end on a real database (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailgate import tickets, tokens
from mailgate.app import App
from mailgate.ingest import notify, pipeline
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.pipeline import Outcome, TemporaryFailure, ingest
from mailgate.ingest.thread import thread
from mailgate.models import (
    Attachment,
    Event,
    Message,
    Outbox,
    Person,
    Quarantine,
    Status,
    Ticket,
    TicketLink,
)
from tests.conftest import make_settings
from tests.mails import mail
from tests.tnef import winmail_dat


def count(app: App, model: type) -> int:
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def outbox(app: App, kind: str | None = None) -> list[Outbox]:
    with app.sessions() as s:
        query = select(Outbox).order_by(Outbox.id)
        if kind:
            query = query.where(Outbox.kind == kind)
        return list(s.scalars(query))


def ticket(app: App, number: int) -> Ticket:
    with app.sessions() as s:
        return s.scalar(select(Ticket).where(Ticket.number == number))


def messages(app: App, number: int) -> list[Message]:
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        return list(s.scalars(select(Message).where(Message.ticket_id == t.id).order_by(Message.id)))


def new_ticket(app: App, **kwargs: object) -> int:
    result = ingest(app, mail(**kwargs), "smtp")
    assert result.outcome == "new_ticket", result.trace
    return result.ticket_number


# -- a new mail -------------------------------------------------------------------------------


def test_new_mail_makes_a_ticket_with_one_ack_and_one_dispatcher_notice(app: App) -> None:
    result = ingest(app, mail(body="The printer jams.\n", message_id="<m1@client.example.org>"), "smtp")

    assert result.outcome == "new_ticket"
    t = ticket(app, result.ticket_number)
    assert t.subject == "Printer on 3rd floor jams"
    assert t.status == Status.NEW
    acks, notices = outbox(app, "ack"), outbox(app, "dispatcher_new")
    assert len(acks) == 1 and len(notices) == 1 and len(outbox(app)) == 2
    ack = acks[0]
    assert ack.recipients == ["dana@example.com"]
    assert ack.headers["Subject"] == f"[HD #{t.number}] Printer on 3rd floor jams"
    assert ack.headers["Auto-Submitted"] == "auto-replied"
    assert ack.headers["X-Auto-Response-Suppress"] == "All"
    assert ack.headers["In-Reply-To"] == "<m1@client.example.org>"
    assert f"HD #{t.number}" in ack.body and "we will answer by" in ack.body
    assert "  The printer jams." in ack.body  # the request, quoted back
    # Reply-To carries a token signed for this ticket and this requester.
    reply_to = ack.headers["Reply-To"]
    token = tokens.find_tokens(reply_to.split("+", 1)[1])[0]
    assert tokens.verify(app.secret, token).ticket_number == t.number
    assert notices[0].recipients == ["dispatch@example.com"]
    assert "#assign" in notices[0].body and "The printer jams." in notices[0].body


def test_message_keeps_raw_bytes_and_decision_trace(app: App) -> None:
    raw = mail()
    number = new_ticket(app) if False else ingest(app, raw, "pipe").ticket_number
    stored = messages(app, number)[0]
    assert stored.raw == raw
    assert stored.source == "pipe"
    assert [step["step"] for step in stored.trace][:1] == ["dedupe"]
    assert any(step["step"] == "apply" and "new ticket" in step["decision"] for step in stored.trace)


# -- threading ---------------------------------------------------------------------------------


def test_reply_threads_by_subject_tag_from_the_requester(app: App) -> None:
    number = new_ticket(app)
    result = ingest(app, mail(subject=f"AW: Re: [HD #{number}] Printer", body="It jams again.\n"), "smtp")
    assert (result.outcome, result.ticket_number) == ("reply", number)
    assert any(t["step"] == "tag" for t in result.trace)
    assert [m.kind for m in messages(app, number)] == ["new_ticket", "reply"]


def test_reply_threads_by_plus_address_token(app: App) -> None:
    number = new_ticket(app)
    reply_to = outbox(app, "ack")[0].headers["Reply-To"]
    address = reply_to[reply_to.index("<") + 1 : -1]
    result = ingest(app, mail(to=address, subject="no tag here", body="More detail.\n"), "smtp")
    assert (result.outcome, result.ticket_number) == ("reply", number)
    assert result.trace[-1]["step"] == "token" or any(t["step"] == "token" for t in result.trace)


def test_reply_threads_by_references_to_our_signed_message_id_alone(app: App) -> None:
    # Exchange strips the plus address and the subject was rewritten: only References is left.
    number = new_ticket(app)
    ack_id = outbox(app, "ack")[0].message_id
    result = ingest(app, mail(subject="RE: printer", headers={"References": ack_id}, body="Still broken.\n"), "smtp")
    assert (result.outcome, result.ticket_number) == ("reply", number)
    assert any("signed token" in t["decision"] for t in result.trace)


def test_reply_threads_by_references_to_a_stored_message(app: App) -> None:
    number = new_ticket(app, message_id="<orig@client.example.org>")
    result = ingest(
        app, mail(subject="printer", headers={"In-Reply-To": "<orig@client.example.org>"}, body="x\n"), "smtp"
    )
    assert (result.outcome, result.ticket_number) == ("reply", number)


def test_forged_token_does_not_thread(app: App) -> None:
    number = new_ticket(app)
    forged = f"{number}-1-aaaaaaaaaaaaaaaa"
    result = ingest(
        app,
        mail(
            sender="mallory@evil.example",
            to=f"support+{forged}@example.com",
            subject="hello",
            headers={"References": f"<{forged}.ack@example.com>"},
        ),
        "smtp",
    )
    assert result.outcome == "new_ticket" and result.ticket_number != number
    assert any("no valid signature" in t["decision"] for t in result.trace)
    assert len(messages(app, number)) == 1


def test_token_of_another_secret_does_not_thread(app: App) -> None:
    number = new_ticket(app)
    other = tokens.make_token(b"someone else's secret", number, 1)
    result = ingest(app, mail(to=f"support+{other}@example.com", subject="hello"), "smtp")
    assert result.outcome == "new_ticket"


def test_stranger_quoting_a_tag_gets_a_new_linked_ticket(app: App) -> None:
    number = new_ticket(app)
    result = ingest(app, mail(sender="eve@example.net", subject=f"Re: [HD #{number}] Printer", body="Me too\n"), "smtp")
    assert result.outcome == "new_ticket" and result.ticket_number != number
    assert result.linked_ticket == number
    assert len(messages(app, number)) == 1  # nothing was injected into Dana's ticket
    with app.sessions() as s:
        link = s.scalar(select(TicketLink))
        assert (link.kind, s.get(Ticket, link.other_id).number) == ("quoted-tag", number)


def test_cc_of_the_original_mail_may_reply_by_tag(app: App) -> None:
    number = new_ticket(app, headers={"Cc": "Bob <bob@example.com>"})
    result = ingest(app, mail(sender="bob@example.com", subject=f"Re: [HD #{number}] Printer"), "smtp")
    assert (result.outcome, result.ticket_number) == ("reply", number)


def assign(app: App, number: int, address: str) -> None:
    with app.sessions() as s, s.begin():
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        person = s.scalar(select(Person).where(Person.address == address))
        tickets.assign(s, t, person, actor="dispatch@example.com", channel="test", now=t.created_at)


def test_assignee_reply_by_tag_threads_but_unproven_is_no_first_response(app: App, clock) -> None:
    number = new_ticket(app)
    ingest(app, mail(sender="Alice Jones <alice@example.com>", subject="my own question"), "smtp")  # Alice is known
    assign(app, number, "alice@example.com")
    clock.advance(timedelta(minutes=30))
    result = ingest(app, mail(sender="Alice Jones <alice@example.com>", subject=f"Re: [HD #{number}] x"), "smtp")
    assert (result.outcome, result.ticket_number) == ("reply", number)
    # A From header proves nothing: only a proven answer that reached the requester counts
    # (tests/test_relay.py).
    assert ticket(app, number).first_response_at is None


def test_subject_text_alone_never_threads(app: App) -> None:
    first = new_ticket(app, subject="VPN broken")
    second = new_ticket(app, subject="Re: VPN broken")
    assert first != second


def test_reply_text_is_the_new_part_without_quote(app: App) -> None:
    number = new_ticket(app)
    body = (
        "Yes, it is the HP on the left.\n\n"
        "On Mon, 23 Nov 2026 at 09:00, IT Help Desk <support@example.com> wrote:\n"
        "> we received your request\n> and opened ticket HD #1\n"
    )
    ingest(app, mail(subject=f"Re: [HD #{number}] Printer", body=body), "smtp")
    reply = messages(app, number)[1]
    assert reply.text_new == "Yes, it is the HP on the left."
    assert "> we received your request" in reply.text_full


# -- status changes ------------------------------------------------------------------------------


def _set_status(app: App, number: int, status: Status, when) -> None:
    with app.sessions() as s, s.begin():
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        tickets.set_status(s, t, status, actor="alice@example.com", channel="test", now=when)


def test_requester_reply_reopens_a_resolved_ticket(app: App, clock) -> None:
    number = new_ticket(app)
    _set_status(app, number, Status.RESOLVED, clock.now())
    clock.advance(timedelta(days=2))
    ingest(app, mail(subject=f"Re: [HD #{number}] Printer", body="Not fixed after all.\n"), "smtp")
    assert ticket(app, number).status == Status.OPEN
    with app.sessions() as s:
        event = s.scalars(select(Event).where(Event.action == "status").order_by(Event.id)).all()[-1]
        assert (event.old, event.new, event.actor) == ("resolved", "open", "dana@example.com")


def test_a_cc_saying_thanks_does_not_reopen_a_resolved_ticket(app: App, clock) -> None:
    number = new_ticket(app, headers={"Cc": "bob@example.com"})
    _set_status(app, number, Status.RESOLVED, clock.now())
    result = ingest(app, mail(sender="bob@example.com", subject=f"Re: [HD #{number}] x", body="Thanks!\n"), "smtp")
    assert result.outcome == "reply"
    assert ticket(app, number).status == Status.RESOLVED


def test_reply_to_a_long_closed_ticket_opens_a_follow_up(app: App, clock) -> None:
    number = new_ticket(app)
    _set_status(app, number, Status.CLOSED, clock.now())
    clock.advance(timedelta(days=app.settings.tickets.reopen_window_days + 1))
    result = ingest(app, mail(subject=f"Re: [HD #{number}] Printer", body="It is back.\n"), "smtp")
    assert result.outcome == "new_ticket" and result.linked_ticket == number
    assert ticket(app, number).status == Status.CLOSED


def test_reply_to_a_recently_closed_ticket_reopens_it(app: App, clock) -> None:
    number = new_ticket(app)
    _set_status(app, number, Status.CLOSED, clock.now())
    clock.advance(timedelta(days=1))
    result = ingest(app, mail(subject=f"Re: [HD #{number}] Printer"), "smtp")
    assert (result.outcome, result.ticket_number) == ("reply", number)
    assert ticket(app, number).status == Status.OPEN


# -- duplicates ----------------------------------------------------------------------------------


def test_same_mail_twice_is_stored_once(app: App) -> None:
    raw = mail()
    first = ingest(app, raw, "smtp")
    second = ingest(app, raw, "imap:support")
    assert second.outcome == "duplicate" and second.ticket_number == first.ticket_number
    assert count(app, Message) == 1 and count(app, Ticket) == 1 and len(outbox(app)) == 2


def test_one_mail_to_support_and_dispatcher_makes_one_ticket(app: App) -> None:
    raw = mail(to="support@example.com, dispatch@example.com")
    copy_support = b"Delivered-To: support@example.com\r\nReceived: from a by b; Mon, 23 Nov 2026\r\n" + raw
    copy_dispatch = b"Delivered-To: dispatch@example.com\r\nReceived: from a by c; Mon, 23 Nov 2026\r\n" + raw
    assert ingest(app, copy_support, "smtp", ["support@example.com"]).outcome == "new_ticket"
    assert ingest(app, copy_dispatch, "smtp", ["dispatch@example.com"]).outcome == "duplicate"
    assert count(app, Ticket) == 1 and len(outbox(app, "ack")) == 1


def test_copies_without_message_id_are_deduplicated_by_content(app: App) -> None:
    raw = mail(message_id=None)
    a = b"Received: from x by y; Mon, 23 Nov 2026 09:00:01 +0000\r\nDelivered-To: support@example.com\r\n" + raw
    b = b"Received: from x by z; Mon, 23 Nov 2026 09:00:02 +0000\r\nDelivered-To: dispatch@example.com\r\n" + raw
    assert ingest(app, a, "smtp").outcome == "new_ticket"
    assert ingest(app, b, "smtp").outcome == "duplicate"
    other = mail(message_id=None, body="A different problem.\n")
    assert ingest(app, other, "smtp").outcome == "new_ticket"


# -- auto-generated mail --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto-Submitted": "auto-replied"},
        {"X-Autoreply": "yes"},
        {"Return-Path": "<>"},
        {"X-Mailgate-Loop": "mailgate"},
    ],
    ids=lambda h: next(iter(h.items()))[0] + "=" + next(iter(h.items()))[1],
)
def test_auto_replies_are_stored_but_get_no_ticket_and_no_answer(app: App, headers: dict[str, str]) -> None:
    result = ingest(app, mail(subject="Re: printer", headers=headers), "smtp")
    assert result.outcome == "auto"
    assert count(app, Message) == 1 and count(app, Ticket) == 0
    assert outbox(app) == []


@pytest.mark.parametrize(
    ("headers", "sender"),
    [
        ({"Auto-Submitted": "auto-generated"}, "nagios@example.com"),
        ({"Precedence": "bulk"}, "news@example.com"),
        ({"Precedence": "junk"}, "x@example.com"),
        ({"List-Id": "<it-news.example.com>"}, "list@example.com"),
        ({}, "no-reply@monitoring.example.com"),
    ],
    ids=["auto-generated", "bulk", "junk", "list-id", "noreply"],
)
def test_generated_mail_gets_a_ticket_but_never_an_acknowledgement(
    app: App, headers: dict[str, str], sender: str
) -> None:
    result = ingest(app, mail(sender=sender, subject="Disk /var 95% full on srv1", headers=headers), "smtp")
    assert result.outcome == "new_ticket"
    assert outbox(app, "ack") == []
    notice = outbox(app, "dispatcher_new")[0]
    assert "Automatic mail" in notice.body and "got no acknowledgement" in notice.body
    assert any("automatic mail" in t["decision"] for t in result.trace)


def test_generated_mail_on_a_ticket_changes_no_status(app: App, clock) -> None:
    number = new_ticket(app)
    _set_status(app, number, Status.RESOLVED, clock.now())
    result = ingest(app, mail(subject=f"Re: [HD #{number}] x", headers={"Precedence": "bulk"}, body="digest\n"), "smtp")
    assert (result.outcome, result.ticket_number) == ("auto", number)
    assert ticket(app, number).status == Status.RESOLVED


def test_mail_through_our_own_group_is_from_a_person(app: App, tmp_path) -> None:
    settings = app.settings.model_copy(
        update={"addresses": app.settings.addresses.model_copy(update={"own_list_ids": ["support.example.com"]})}
    )
    group = App.build(settings, clock=app.clock, engine=app.engine)
    headers = {"List-Id": "IT Support <support.example.com>", "Precedence": "list"}
    assert ingest(group, mail(headers=headers), "smtp").outcome == "new_ticket"
    other = ingest(group, mail(headers={"List-Id": "<news.example.com>"}), "smtp")
    assert any("List-Id" in t["decision"] for t in other.trace)


def test_a_different_mail_reusing_a_message_id_is_kept(app: App) -> None:
    first = ingest(app, mail(message_id="<fixed@monitor.example>", subject="disk full on srv1"), "smtp")
    other = mail(message_id="<fixed@monitor.example>", sender="ops@example.com", subject="disk full on srv2")
    second = ingest(app, other, "smtp")
    assert (first.outcome, second.outcome) == ("new_ticket", "new_ticket")
    assert ingest(app, other, "smtp").outcome == "duplicate"  # its own redelivery is still a copy
    assert count(app, Message) == 2


def test_internationalised_sender_address_gets_a_ticket_without_a_crash(app: App) -> None:
    raw = _raw('From: "Jöhn Doe" <jdöe@mächine.example>\nTo: support@example.com\nSubject: hi\n', b"x\r\n")
    result = ingest(app, raw, "smtp")
    assert result.outcome == "new_ticket"
    assert any("SMTPUTF8" in t["decision"] for t in result.trace)
    assert [o.kind for o in outbox(app)] == ["dispatcher_new"]


def test_a_request_whose_subject_sounds_automatic_still_gets_a_ticket(app: App) -> None:
    result = ingest(app, mail(subject="Out of office assistant will not turn off"), "smtp")
    assert result.outcome == "new_ticket"
    assert outbox(app, "dispatcher_new")  # a person sees it


def test_the_dispatchers_reply_stays_a_reply(app: App, clock) -> None:
    number = new_ticket(app)
    notice_id = outbox(app, "dispatcher_new")[-1].message_id
    clock.advance(timedelta(minutes=5))
    reply = ingest(
        app, mail(sender="dispatch@example.com", subject="Re: x", headers={"In-Reply-To": notice_id}), "smtp"
    )
    assert (reply.outcome, reply.ticket_number) == ("reply", number)
    assert ticket(app, number).first_response_at == clock.now()


def test_same_message_id_without_date_but_other_content_is_kept(app: App) -> None:
    ingest(app, _raw("From: mon@example.com\nSubject: srv7 is UP\nMessage-ID: <alert@mon>\n", b"up\r\n"), "smtp")
    down = ingest(
        app, _raw("From: mon@example.com\nSubject: srv7 is DOWN\nMessage-ID: <alert@mon>\n", b"x\r\n"), "smtp"
    )
    assert down.outcome == "new_ticket"


def test_the_same_mail_with_a_rewritten_from_is_still_a_copy(app: App) -> None:
    # A group that rewrites From ("Dana via Support") delivers a second copy of the same mail.
    original = mail(message_id="<group@client.example.org>")
    rewritten = original.replace(
        b"From: Dana Smith <dana@example.com>", b"From: Dana via Support <it-group@example.com>"
    )
    assert ingest(app, original, "smtp").outcome == "new_ticket"
    assert ingest(app, rewritten, "smtp").outcome == "duplicate"


def test_someone_taken_off_the_staff_list_loses_the_staff_role(app: App) -> None:
    number = new_ticket(app)
    ingest(app, mail(sender="alice@example.com", subject="my own question"), "smtp")
    assign(app, number, "alice@example.com")
    assert ingest(app, mail(sender="alice@example.com", subject=f"Re: [HD #{number}] x"), "smtp").outcome == "reply"
    former = App.build(app.settings.model_copy(update={"staff": []}), clock=app.clock, engine=app.engine)
    result = ingest(former, mail(sender="alice@example.com", subject=f"Re: [HD #{number + 5}] y"), "smtp")
    with app.sessions() as s:
        assert s.scalar(select(Person.role).where(Person.address == "alice@example.com")) == "requester"
    assert result.outcome == "new_ticket"


def test_auto_submitted_no_is_a_person(app: App) -> None:
    assert ingest(app, mail(headers={"Auto-Submitted": "no"}), "smtp").outcome == "new_ticket"


def test_mail_from_postmaster_or_our_own_address_is_never_acknowledged(app: App) -> None:
    assert ingest(app, mail(sender="MAILER-DAEMON@mx.example.com"), "smtp").outcome == "auto"
    assert ingest(app, mail(sender="IT Help Desk <support@example.com>"), "smtp").outcome == "auto"
    assert outbox(app) == []


def test_auto_reply_to_a_ticket_is_attached_without_changing_status(app: App, clock) -> None:
    number = new_ticket(app)
    _set_status(app, number, Status.RESOLVED, clock.now())
    ack_id = outbox(app, "ack")[0].message_id
    result = ingest(
        app,
        mail(subject="Automatic reply: Printer", headers={"Auto-Submitted": "auto-replied", "In-Reply-To": ack_id}),
        "smtp",
    )
    assert (result.outcome, result.ticket_number) == ("auto", number)
    assert ticket(app, number).status == Status.RESOLVED
    assert len(outbox(app)) == 2


def _dsn(original_message_id: str, recipient: str, status: str = "5.1.1", action: str = "failed") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n"
        "To: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-" + recipient + "-" + status + "@mx.example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not be "
        "delivered.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: IT Help Desk <support@example.com>\r\nTo: {recipient}\r\nSubject: [HD #1] x\r\n"
        f"Message-ID: {original_message_id}\r\n\r\n"
        "--B--\r\n"
    ).encode()


def test_dsn_of_our_ack_is_attached_and_marks_the_address_undeliverable(app: App) -> None:
    number = new_ticket(app)
    ack_id = outbox(app, "ack")[0].message_id
    result = ingest(app, _dsn(ack_id, "dana@example.com"), "smtp")
    assert (result.outcome, result.ticket_number) == ("bounce", number)
    with app.sessions() as s:
        dana = s.scalar(select(Person).where(Person.address == "dana@example.com"))
        assert dana.undeliverable_since is not None and "5.1.1" in dana.undeliverable_reason
    assert len(outbox(app)) == 2  # the bounce itself is not answered
    # Dana is not mailed again: a new ticket from that address gets no acknowledgement.
    again = ingest(app, mail(subject="another problem"), "smtp")
    assert again.outcome == "new_ticket" and len(outbox(app, "ack")) == 1
    assert any("undeliverable" in t["decision"] for t in again.trace)


def test_forged_dsn_threaded_by_a_chosen_message_id_marks_nobody(app: App) -> None:
    # Mallory opens a ticket with a Message-ID of her choosing, then "bounces" it for the CEO.
    ingest(app, mail(sender="mallory@evil.example", message_id="<chosen@evil.example>"), "smtp")
    ingest(app, mail(sender="ceo@example.com", subject="budget"), "smtp")
    result = ingest(app, _dsn("<chosen@evil.example>", "ceo@example.com"), "smtp")
    # Not even on Mallory's ticket: a bounce names its ticket by our signed token alone.
    assert result.outcome == "bounce" and result.ticket_number is None
    with app.sessions() as s:
        assert s.scalar(select(Person).where(Person.address == "ceo@example.com")).undeliverable_since is None


def test_dsn_with_our_token_marks_only_the_person_that_mail_went_to(app: App) -> None:
    new_ticket(app, headers={"Cc": "bob@example.com"})
    ack_id = outbox(app, "ack")[0].message_id  # sent to Dana
    ingest(app, _dsn(ack_id, "bob@example.com"), "smtp")
    with app.sessions() as s:
        assert s.scalar(select(Person).where(Person.address == "bob@example.com")).undeliverable_since is None


def test_temporary_dsn_does_not_mark_undeliverable(app: App) -> None:
    new_ticket(app)
    ack_id = outbox(app, "ack")[0].message_id
    assert ingest(app, _dsn(ack_id, "dana@example.com", "4.2.2", "delayed"), "smtp").outcome == "bounce"
    with app.sessions() as s:
        assert s.scalar(select(Person).where(Person.address == "dana@example.com")).undeliverable_since is None


def test_forged_dsn_without_our_token_marks_nobody(app: App) -> None:
    new_ticket(app)
    result = ingest(app, _dsn("<unrelated@elsewhere.example>", "dana@example.com"), "smtp")
    assert result.outcome == "bounce" and result.ticket_number is None
    with app.sessions() as s:
        assert s.scalar(select(Person).where(Person.address == "dana@example.com")).undeliverable_since is None


def test_our_own_acknowledgement_coming_back_is_not_answered(app: App) -> None:
    from mailgate.outgoing.compose import render

    new_ticket(app)
    looped = render(outbox(app, "ack")[0])
    result = ingest(app, looped, "smtp")
    assert result.outcome == "auto"
    assert len(outbox(app)) == 2


def test_by_default_a_person_writing_four_times_an_hour_gets_every_acknowledgement(
    tmp_path: Path, db_url: str, clock
) -> None:
    """The tests' desk allows 3 (see conftest); the shipped default must not cut off a person
    who writes four times in an hour. Robots are stopped by the circuit breaker instead."""
    app = App.build(make_settings(tmp_path, db_url, limits={}), clock=clock)
    try:
        for i in range(4):
            ingest(app, mail(subject=f"question {i}", body=f"body {i}\n"), "smtp")
            clock.advance(timedelta(minutes=10))
        assert len(outbox(app, "ack")) == 4
    finally:
        app.close()


def test_acknowledgements_are_rate_limited_per_sender(app: App, clock) -> None:
    # Under the breaker's limit on new tickets (tests/test_loops.py), above the one on acks.
    for i in range(6):
        ingest(app, mail(subject=f"problem {i}", body=f"body {i}\n"), "smtp")
        clock.advance(timedelta(seconds=1))
    assert count(app, Ticket) == 6
    assert len(outbox(app, "ack")) == app.settings.limits.acks_per_sender == 3
    assert len(outbox(app, "dispatcher_new")) == 6
    clock.advance(timedelta(minutes=app.settings.limits.ack_window_minutes))
    ingest(app, mail(subject="after the window"), "smtp")
    assert len(outbox(app, "ack")) == 4


# -- text and attachments ------------------------------------------------------------------------


def _raw(headers: str, body: bytes) -> bytes:
    return headers.replace("\n", "\r\n").encode() + b"\r\n" + body


def _text_of(app: App, raw: bytes) -> tuple[str, str]:
    result = ingest(app, raw, "smtp")
    assert result.outcome == "new_ticket", result.trace
    t = ticket(app, result.ticket_number)
    return t.subject, messages(app, result.ticket_number)[0].text_full


@pytest.mark.parametrize(
    ("charset", "cte", "body", "expected"),
    [
        ("iso-8859-1", "quoted-printable", b"Gr=FC=DFe aus K=F6ln", "Grüße aus Köln"),
        ("iso-8859-2", "8bit", "Zażółć gęślą jaźń".encode("iso-8859-2"), "Zażółć gęślą jaźń"),
        ("windows-1252", "8bit", "Preis 20 \u20ac \u2013 \u201eok\u201c".encode("cp1252"), "Preis 20 € – „ok“"),
        ("koi8-r", "8bit", "Привет мир".encode("koi8-r"), "Привет мир"),
        ("utf-8", "base64", b"w6lsw6h2ZSDDqXTDqQ==", "élève été"),
        # Wrongly declared: UTF-8 bytes labelled us-ascii, and a charset that does not exist.
        ("us-ascii", "8bit", "Café crème".encode(), "Café crème"),
        ("x-unknown-charset", "8bit", "naïve".encode(), "naïve"),
    ],
)
def test_charsets_give_readable_text(app: App, charset: str, cte: str, body: bytes, expected: str) -> None:
    raw = _raw(
        "From: =?iso-8859-1?q?J=FCrgen_M=FCller?= <juergen@example.com>\n"
        "To: support@example.com\n"
        f"Subject: =?utf-8?b?{__import__('base64').b64encode('Drucker kaputt – Büro 3'.encode()).decode()}?=\n"
        f"Message-ID: <cs-{charset}-{cte}@example.com>\n"
        "MIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset={charset}\n"
        f"Content-Transfer-Encoding: {cte}\n",
        body + b"\r\n",
    )
    subject, text = _text_of(app, raw)
    assert subject == "Drucker kaputt – Büro 3"
    assert expected in text
    with app.sessions() as s:
        assert s.scalar(select(Person.name).where(Person.address == "juergen@example.com")) == "Jürgen Müller"


def test_undeclared_8bit_latin1_header_is_readable(app: App) -> None:
    raw = _raw("From: Jörg <joerg@example.com>\nTo: support@example.com\nSubject: Büro kalt\n", b"x\r\n")
    raw = raw.replace("Jörg".encode(), "Jörg".encode("latin-1")).replace("Büro".encode(), "Büro".encode("latin-1"))
    subject, _ = _text_of(app, raw)
    assert subject == "Büro kalt"


def test_html_only_mail_becomes_readable_text(app: App) -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<p>Hello,</p><p>the <b>VPN</b> drops every <i>10&nbsp;minutes</i>.</p>"
        "<ul><li>Windows 11</li><li>Client 5.2</li></ul></body></html>"
    )
    _, text = _text_of(app, mail(body=None, html=html))
    assert "the VPN drops every 10\xa0minutes." in text or "the VPN drops every 10 minutes." in text
    assert "Windows 11" in text and "<p>" not in text and "color: red" not in text


def test_attachment_bytes_are_stored_exactly(app: App) -> None:
    payload = os.urandom(200_000) + b"\r\n\x00\xff" * 10
    result = ingest(app, mail(attachments=[("log.bin", "application/octet-stream", payload)]), "smtp")
    with app.sessions() as s:
        att = s.scalar(select(Attachment))
    assert (att.filename, att.size, att.stored) == ("log.bin", len(payload), True)
    assert app.store.get(att.sha256) == payload
    assert result.outcome == "new_ticket"


def test_attachment_over_the_limit_is_kept_as_a_note_and_the_requester_told(app: App) -> None:
    big = b"x" * (app.settings.limits.max_attachment_bytes + 1)
    ingest(
        app, mail(attachments=[("huge.iso", "application/octet-stream", big), ("ok.txt", "text/plain", b"hi")]), "smtp"
    )
    with app.sessions() as s:
        rows = {a.filename: a for a in s.scalars(select(Attachment))}
    assert not rows["huge.iso"].stored and "over the limit" in rows["huge.iso"].note
    assert rows["ok.txt"].stored
    assert not app.store.path_for(rows["huge.iso"].sha256).exists()
    ack = outbox(app, "ack")[0]
    assert "huge.iso" in ack.body and "too large" in ack.body


def test_winmail_dat_attachments_are_unpacked_with_exact_bytes(app: App) -> None:
    photo = os.urandom(5000)
    tnef = winmail_dat([("report.pdf", b"%PDF-1.4 quarterly"), ("photo.jpg", photo)])
    ingest(app, mail(attachments=[("winmail.dat", "application/ms-tnef", tnef)]), "smtp")
    with app.sessions() as s:
        rows = {a.filename: a for a in s.scalars(select(Attachment))}
    assert set(rows) == {"report.pdf", "photo.jpg"}
    assert app.store.get(rows["photo.jpg"].sha256) == photo


def test_damaged_winmail_dat_is_kept_as_it_is(app: App) -> None:
    ingest(app, mail(attachments=[("winmail.dat", "application/ms-tnef", b"\x89PNG not tnef")]), "smtp")
    with app.sessions() as s:
        assert [a.filename for a in s.scalars(select(Attachment))] == ["winmail.dat"]


def test_encoded_word_filenames_are_decoded(app: App) -> None:
    raw = _raw(
        "From: a@example.com\nTo: support@example.com\nSubject: f\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n',
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee file\r\n--b\r\n"
        b'Content-Type: application/pdf; name="=?iso-8859-1?Q?Pr=FCfbericht_N=B0_1.pdf?="\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--b--\r\n",
    )
    ingest(app, raw, "smtp")
    with app.sessions() as s:
        assert s.scalar(select(Attachment.filename)) == "Prüfbericht N° 1.pdf"


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x01\x02 binary garbage \xff\xfe", "no header"),
        (b"just some text\nwithout any header\n", "no header"),
        (b"Subject: no sender anywhere\r\n\r\nbody\r\n", "no sender"),
    ],
)
def test_unparseable_input_lands_in_quarantine_with_its_bytes(app: App, raw: bytes, reason: str) -> None:
    result = ingest(app, raw, "pipe")
    assert result.outcome == "quarantined"
    with app.sessions() as s:
        row = s.get(Quarantine, result.quarantine_id)
        assert row.raw == raw and reason in row.reason
    assert count(app, Ticket) == 0 and count(app, Message) == 0


def test_a_mail_without_from_takes_the_envelope_sender(app: App) -> None:
    raw = b"Subject: scan from the 3rd floor\r\n\r\nsee attachment\r\n"
    result = ingest(app, raw, "smtp", ["support@example.com"], "scanner@example.com")
    assert result.outcome == "new_ticket"
    assert outbox(app, "ack")[0].recipients == ["scanner@example.com"]


def test_an_envelope_sender_with_undecodable_bytes_is_repaired_like_a_from_header(app: App) -> None:
    """Issue 10: the envelope fallback skipped the address repair, so the store refused the
    undecodable byte and the mail was retried forever. It is read as a From header's would be."""
    raw = b"Subject: scan from the 3rd floor\r\n\r\nsee attachment\r\n"
    result = ingest(app, raw, "pipe", ["support@example.com"], "scanner-\udcfc@example.com")
    assert result.outcome == "new_ticket", result.trace
    with app.sessions() as s:
        assert "scanner-ü@example.com" in s.scalars(select(Person.address)).all()


def test_failure_inside_the_transaction_leaves_nothing(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full while rendering the notice")

    monkeypatch.setattr(notify, "queue_dispatcher_notice", broken)
    raw = mail(attachments=[("a.txt", "text/plain", b"attached")])
    with pytest.raises(TemporaryFailure, match="disk full"):
        ingest(app, raw, "smtp")
    for model in (Ticket, Message, Outbox, Event, Attachment, Quarantine, Person):
        assert count(app, model) == 0, model.__name__
    files = [p for p in app.store.root.rglob("*") if p.is_file()] if app.store.root.exists() else []
    assert files == []  # the attachment written during the transaction went with it
    monkeypatch.undo()
    # Offered again after the fault is gone, the same mail is stored normally.
    assert ingest(app, raw, "smtp").outcome == "new_ticket"


# -- the steps -------------------------------------------------------------------------------------


def test_a_step_added_after_thread_sees_its_decision_and_can_end_the_pipeline(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # How the dispatcher desk adds its steps: one more entry in STEPS.
    number = new_ticket(app)
    seen: list[int | None] = []

    def hold_replies(item: Incoming) -> Outcome | None:
        ticket = item.thread.ticket
        seen.append(ticket.number if ticket else None)
        if ticket is None:
            return None
        item.note("hold", f"held back from ticket {ticket.number}")
        return Outcome.REPLY

    steps = list(pipeline.STEPS)
    steps.insert(steps.index(thread) + 1, hold_replies)
    monkeypatch.setattr(pipeline, "STEPS", tuple(steps))

    result = ingest(app, mail(subject=f"Re: [HD #{number}] Printer", body="More.\n"), "smtp")
    assert result.outcome == Outcome.REPLY and seen == [number]
    assert result.trace[-1] == {"step": "hold", "decision": f"held back from ticket {number}"}
    assert [m.kind for m in messages(app, number)] == ["new_ticket"]  # the steps after it did not run
    other = ingest(app, mail(subject="Another problem"), "smtp")  # the step lets this one go on
    assert other.outcome == Outcome.NEW_TICKET and seen == [number, None]


def test_the_log_line_of_a_mail_without_message_id_says_so(app: App, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="mailgate.ingest"):
        ingest(app, mail(message_id=None), "smtp")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ingest source="))
    assert "msgid=(none)" in line and "None" not in line
