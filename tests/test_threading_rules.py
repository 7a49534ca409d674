"""Who may write into a ticket: whatever names it (token, Message-ID, tag), only the people on it
or a holder of a token we issued to them. And what one mail's To/Cc can cost."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailgate import tokens
from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.config import ConfigError, load_settings
from mailgate.ingest.pipeline import ingest
from mailgate.models import Message, Participant, Person, Ticket
from tests.conftest import make_settings
from tests.mails import mail
from tests.test_ingest import assign, messages, new_ticket, outbox, ticket


def linked_new_ticket(result, number: int) -> bool:
    return result.outcome == "new_ticket" and result.ticket_number != number and result.linked_ticket == number


def says(result, *parts: str) -> bool:
    """Some decision on the trace names all of `parts`."""
    return any(all(p in t["decision"] for p in parts) for t in result.trace)


def person_id(app: App, address: str) -> int:
    with app.sessions() as s:
        return s.scalar(select(Person.id).where(Person.address == address))


def reply_address(app: App, kind: str = "ack") -> str:
    reply_to = outbox(app, kind)[0].headers["Reply-To"]
    return reply_to[reply_to.index("<") + 1 : -1]


# -- strangers -----------------------------------------------------------------------------------


def test_a_stranger_replying_to_the_requesters_message_gets_a_new_linked_ticket(app: App) -> None:
    # The requester's Message-ID is in the headers of every copy of her mail.
    number = new_ticket(app, message_id="<dana-1@client.example.org>")
    result = ingest(
        app,
        mail(
            sender="Eve <eve@example.net>",
            subject="Re: Printer on 3rd floor jams",
            headers={"In-Reply-To": "<dana-1@client.example.org>", "References": "<dana-1@client.example.org>"},
            body="Fixed it. Please confirm your password at http://evil.example/\n",
        ),
        "smtp",
    )
    assert linked_new_ticket(result, number)
    assert [m.kind for m in messages(app, number)] == ["new_ticket"]  # nothing written into Dana's ticket
    assert says(result, "eve@example.net", f"ticket {number}")
    # The dispatcher is told which ticket it refers to.
    notice = outbox(app, "dispatcher_new")[-1]
    assert notice.ticket_id != ticket(app, number).id and f"#{number}" in notice.body
    # Mailing in made her no participant: the tag alone does not let her in later.
    later = ingest(app, mail(sender="eve@example.net", subject=f"Re: [HD #{number}] Printer"), "smtp")
    assert linked_new_ticket(later, number)
    assert len(messages(app, number)) == 1


@pytest.mark.parametrize("where", ["reply address", "references"])
def test_a_stranger_with_the_token_issued_to_the_requester_gets_a_new_linked_ticket(app: App, where: str) -> None:
    # Dana forwarded our acknowledgement; Eve answers it (to its Reply-To, or quoting its Message-ID).
    number = new_ticket(app)
    if where == "reply address":
        forwarded = mail(sender="eve@example.net", to=reply_address(app), subject="Fwd: your ticket")
    else:
        headers = {"References": outbox(app, "ack")[0].message_id}
        forwarded = mail(sender="eve@example.net", subject="Re: your ticket", headers=headers)
    result = ingest(app, forwarded, "smtp")
    assert linked_new_ticket(result, number)
    assert len(messages(app, number)) == 1
    assert says(result, "eve@example.net", f"ticket {number}")
    # The requester herself still threads with it.
    assert ingest(app, mail(to=reply_address(app), subject="more detail"), "smtp").ticket_number == number


def test_a_forged_automatic_reply_naming_the_requesters_message_stays_off_her_ticket(app: App) -> None:
    # Automatic mail never opens a ticket; it goes on one only from someone on it or with our token.
    number = new_ticket(app, message_id="<dana-2@client.example.org>")
    result = ingest(
        app,
        mail(
            sender="eve@example.net",
            subject="Automatic reply: Printer",
            headers={"Auto-Submitted": "auto-replied", "In-Reply-To": "<dana-2@client.example.org>"},
            body="Call me at +1 555 0100 about your printer.\n",
        ),
        "smtp",
    )
    assert result.outcome == "auto" and result.ticket_number is None
    assert len(messages(app, number)) == 1


# -- staff ---------------------------------------------------------------------------------------


def test_a_forged_staff_from_neither_writes_into_a_ticket_nor_answers_it(app: App, clock: FixedClock) -> None:
    number = new_ticket(app)
    clock.advance(timedelta(minutes=30))
    forged = mail(sender="Alice Jones <alice@example.com>", subject=f"Re: [HD #{number}] Printer", body="Done.\n")
    result = ingest(app, forged, "smtp")
    assert linked_new_ticket(result, number)
    assert len(messages(app, number)) == 1
    assert ticket(app, number).first_response_at is None  # the SLA clock still runs


def test_staff_copied_on_the_first_mail_get_no_staff_rights_by_it(app: App) -> None:
    number = new_ticket(app, headers={"Cc": "Alice Jones <alice@example.com>, Bob <bob@example.com>"})
    forged = ingest(app, mail(sender="alice@example.com", subject=f"Re: [HD #{number}] Printer"), "smtp")
    assert linked_new_ticket(forged, number)
    assert ticket(app, number).first_response_at is None
    # Bob, copied the same way and no staff, may answer.
    assert ingest(app, mail(sender="bob@example.com", subject=f"Re: [HD #{number}] x"), "smtp").outcome == "reply"


def test_staff_holding_a_token_issued_to_them_write_into_the_ticket(app: App, clock: FixedClock) -> None:
    number = new_ticket(app)
    ingest(app, mail(sender="alice@example.com", subject="my own question"), "smtp")  # Alice is known
    token = tokens.make_token(app.secret, number, person_id(app, "alice@example.com"))
    clock.advance(timedelta(minutes=10))
    result = ingest(
        app, mail(sender="alice@example.com", to=f"support+{token}@example.com", subject="Re: Printer"), "smtp"
    )
    assert (result.outcome, result.ticket_number) == ("reply", number)
    # On the ticket, but not working on it (neither assigned nor of its team): the mail is kept,
    # not relayed to the requester, so it is no first response (tests/test_relay.py).
    assert ticket(app, number).first_response_at is None


def test_an_assignee_taken_off_the_ticket_no_longer_threads_by_tag(app: App) -> None:
    number = new_ticket(app)
    ingest(app, mail(sender="alice@example.com", subject="my own question"), "smtp")
    assign(app, number, "alice@example.com")
    assert ingest(app, mail(sender="alice@example.com", subject=f"Re: [HD #{number}] a"), "smtp").outcome == "reply"
    assign(app, number, "dispatch@example.com")
    result = ingest(app, mail(sender="alice@example.com", subject=f"Re: [HD #{number}] b"), "smtp")
    assert linked_new_ticket(result, number)


# -- participants --------------------------------------------------------------------------------


def test_new_cc_addresses_on_a_reply_do_not_join_the_ticket(app: App) -> None:
    number = new_ticket(app)
    reply = mail(subject=f"Re: [HD #{number}] Printer", headers={"Cc": "Carol <carol@example.com>"})
    assert ingest(app, reply, "smtp").outcome == "reply"
    carol = ingest(app, mail(sender="carol@example.com", subject=f"Re: [HD #{number}] Printer"), "smtp")
    assert linked_new_ticket(carol, number)


def test_the_first_people_copied_become_participants_up_to_the_limit(
    tmp_path: Path, db_url: str, clock: FixedClock
) -> None:
    settings = make_settings(tmp_path, db_url, limits={"max_participants_per_mail": 2})
    app = App.build(settings, clock=clock)
    try:
        number = new_ticket(
            app, to="support@example.com, a@example.org", headers={"Cc": "b@example.org, c@example.org"}
        )
        c = ingest(app, mail(sender="c@example.org", subject=f"Re: [HD #{number}] x"), "smtp")
        assert linked_new_ticket(c, number)
        b = ingest(app, mail(sender="b@example.org", subject=f"Re: [HD #{number}] x"), "smtp")
        assert (b.outcome, b.ticket_number) == ("reply", number)
    finally:
        app.close()


def _mail_copying(n: int) -> bytes:
    cc = ",\r\n ".join(f"Person {i} <person{i}@example.org>" for i in range(n))
    return (
        "From: Dana Smith <dana@example.com>\r\nTo: support@example.com\r\n"
        f"Cc: {cc}\r\nSubject: Meeting room projector\r\nMessage-ID: <cc-{n}@client.example.org>\r\n"
        "Date: Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\nThe projector in room 4 is dead.\r\n"
    ).encode()


@pytest.mark.parametrize("n", [10_000, 60_000])
def test_a_mail_copying_tens_of_thousands_is_ingested_quickly_and_says_what_was_cut(app: App, n: int) -> None:
    raw = _mail_copying(n)
    assert len(raw) < app.settings.limits.max_message_bytes
    limit = app.settings.limits.max_participants_per_mail
    started = time.perf_counter()
    result = ingest(app, raw, "smtp")
    elapsed = time.perf_counter() - started
    assert result.outcome == "new_ticket"
    # The goal is 15 s for any mail within the size limit; the bound on participants keeps this
    # one at a few seconds, most of it parsing the header.
    assert elapsed < 15, f"{n} addresses in Cc took {elapsed:.1f} s"
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == result.ticket_number))
        participants = s.scalar(select(func.count()).select_from(Participant).where(Participant.ticket_id == t.id))
        assert participants == 1 + limit  # the requester and the first ones copied
        assert s.scalar(select(func.count()).select_from(Person)) == 1 + limit + 1  # and the dispatcher
        stored = s.scalar(select(Message).where(Message.ticket_id == t.id))
        assert len(stored.cc_addrs) == n and stored.raw == raw  # the mail itself is whole
    assert says(result, str(n), str(limit), str(n - limit))


def test_a_bad_participant_limit_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text("[limits]\nmax_participants_per_mail = -1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "limits.max_participants_per_mail" in str(info.value) and "-1" in str(info.value)
