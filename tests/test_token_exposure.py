"""A staff member's reply token that was shown to others is replaced: a staff member who answers
with the requester (or anyone outside the desk) on To/Cc shows them her reply address, and the
mail she answered carries her token in its Message-ID. From then on the old token threads but
proves nothing, and the desk's mail to her carries a new one."""

from __future__ import annotations

import pytest

from mailgate import tokens
from mailgate.app import App
from mailgate.ingest.pipeline import IngestResult, ingest
from mailgate.journal import Journal
from mailgate.models import Status
from mailgate.spool import Spool
from mailgate.transports.smtp import Listener
from tests.desk import REQUESTER, command, desk, events, open_ticket, receipt, reply_address, rows, ticket
from tests.mails import mail

ALICE = "alice@example.com"


@pytest.fixture
def app(tmp_path, db_url, clock):
    application = desk(tmp_path, db_url, clock)
    yield application
    application.close()


def _assigned_to_alice(app: App) -> tuple[int, str, str]:
    """A ticket assigned to alice; her token's address and the notice's Message-ID."""
    number = open_ticket(app)
    assert command(app, number, "#assign alice").outcome == "reply"
    notice = receipt(app, ALICE, "assigned")
    return number, reply_address(notice), notice.message_id


def _from_alice(app: App, number: int, to: str, body: str, *, cc: str = "", in_reply_to: str = "") -> IngestResult:
    headers = {"Cc": cc} if cc else {}
    if in_reply_to:
        headers["In-Reply-To"] = in_reply_to
    raw = mail(
        sender=f"Alice Jones <{ALICE}>", to=to, subject=f"Re: [HD #{number}] Printer", body=body, headers=headers
    )
    return ingest(app, raw, "smtp")


def _expose(app: App, number: int, token_address: str, notice_id: str) -> IngestResult:
    """Alice answers the notice from her client, with the requester on Cc."""
    body = "I will come by at three and replace the drum.\n"
    return _from_alice(app, number, token_address, body, cc=f"Dana Smith <{REQUESTER}>", in_reply_to=notice_id)


def test_the_exposing_answer_is_handled_and_a_forgery_with_the_old_token_is_refused(app: App) -> None:
    number, old, notice_id = _assigned_to_alice(app)

    answer = _expose(app, number, old, notice_id)
    assert answer.outcome == "reply" and answer.ticket_number == number
    (relayed,) = rows(app, "answer", REQUESTER)
    assert "replace the drum" in relayed.body

    # Dana saw alice's reply address on her copy, and writes alice's From to it.
    forged = _from_alice(app, number, old, "#close\n")
    assert forged.outcome == "refused"
    assert forged.ticket_number == number  # an old token still threads: threading is not proof
    assert ticket(app, number).status != Status.CLOSED
    (refused,) = events(app, number, "commands_refused")
    assert "not authenticated as alice@example.com" in refused.new
    explanation = " ".join(receipt(app, ALICE, "command_unproven").body.split())
    assert "shown to other recipients" in explanation


def test_a_forged_answer_with_the_old_token_is_not_relayed_to_the_requester(app: App) -> None:
    number, old, notice_id = _assigned_to_alice(app)
    _expose(app, number, old, notice_id)

    forged = _from_alice(app, number, old, "Please send your password to me.\n")
    assert forged.ticket_number == number
    assert len(rows(app, "answer", REQUESTER)) == 1  # only alice's real answer
    kept = " ".join(receipt(app, ALICE, "answer_kept").body.split())
    assert "shown to other recipients" in kept


def test_the_desks_next_mail_to_alice_carries_a_new_token_that_works(app: App) -> None:
    number, old, notice_id = _assigned_to_alice(app)
    _expose(app, number, old, notice_id)

    newest = [r for r in rows(app, to=ALICE) if r.ticket_id == ticket(app, number).id][-1]
    new = reply_address(newest)
    assert new != old
    assert old.partition("@")[0].partition("+")[2] not in newest.message_id

    assert _from_alice(app, number, new, "#priority high\n").outcome == "reply"
    assert ticket(app, number).priority == "high"


def test_only_the_desks_own_addresses_beside_hers_expose_nothing(app: App) -> None:
    number, old, notice_id = _assigned_to_alice(app)
    body = "Looking into it.\n"
    cc = "helpdesk@example.com, support@example.com, dispatch@example.com"
    assert _from_alice(app, number, old, body, cc=cc, in_reply_to=notice_id).outcome == "reply"

    assert not rows(app, "token_exposed")
    assert _from_alice(app, number, old, "#priority high\n").outcome == "reply"
    assert ticket(app, number).priority == "high"


def test_alice_is_told_once_whatever_she_exposes_again(app: App) -> None:
    number, old, notice_id = _assigned_to_alice(app)
    _expose(app, number, old, notice_id)
    _expose(app, number, old, notice_id)  # she answers the old notice again, Cc dana again

    (notice,) = rows(app, "token_exposed")
    assert notice.recipients == [ALICE]
    text = " ".join(notice.body.split())
    assert REQUESTER in text and "replaced" in text
    # The notice itself carries the new token: answering it works.
    assert _from_alice(app, number, reply_address(notice), "#priority high\n").outcome == "reply"


def test_alice_told_in_german_when_her_language_is_german(tmp_path, db_url, clock) -> None:
    application = desk(tmp_path, db_url, clock, tickets={"language": "de"})
    try:
        number, old, notice_id = _assigned_to_alice(application)
        _expose(application, number, old, notice_id)
        (notice,) = rows(application, "token_exposed")
        assert "ersetzt" in notice.body and REQUESTER in notice.body
    finally:
        application.close()


def test_a_requester_who_copies_a_colleague_keeps_her_token(app: App) -> None:
    number = open_ticket(app)
    dana = reply_address(receipt(app, REQUESTER, "ack"))
    raw = mail(
        sender=REQUESTER,
        to=dana,
        subject=f"Re: [HD #{number}]",
        body="Adding Erin.\n",
        headers={"Cc": "erin@example.org"},
    )
    assert ingest(app, raw, "smtp").ticket_number == number

    close = mail(sender=REQUESTER, to=dana, subject=f"Re: [HD #{number}]", body="#close\n")
    assert ingest(app, close, "smtp").ticket_number == number
    assert ticket(app, number).status == Status.CLOSED
    assert not rows(app, "token_exposed")


def test_the_listener_accepts_the_old_and_the_new_reply_address(app: App) -> None:
    number, old, notice_id = _assigned_to_alice(app)
    _expose(app, number, old, notice_id)
    new = reply_address(receipt(app, ALICE, "token_exposed"))
    settings = app.settings
    with Journal(Spool(settings.spool_dir)) as journal:
        listener = Listener(settings, app.secret, journal)
        assert listener.accepts(old) and listener.accepts(new)  # a recipient check is not proof


def test_a_generation_is_signed_with_the_rest_of_the_token() -> None:
    secret = b"test-secret-not-for-production"
    assert tokens.make_token(secret, 12, 5) == tokens.make_token(secret, 12, 5, 0)  # as before generations
    replaced = tokens.make_token(secret, 12, 5, 2)
    assert tokens.verify(secret, replaced) == tokens.ReplyToken(12, 5, 2)
    assert tokens.find_tokens(f"<{replaced}.assigned@example.com>") == [replaced]
    forged = replaced.replace("r2-", "r3-")
    assert tokens.verify(secret, forged) is None


def test_a_forwarded_notice_shows_her_token_in_the_body_and_replaces_it(app: App) -> None:
    """Alice forwards the notice to an outside contractor with the desk on Cc: her client quotes
    its header (Reply-To with her token) in the body, and no References name our mail."""
    number, old, _ = _assigned_to_alice(app)
    body = (
        "Can you have a look at this one?\n\n"
        "-------- Forwarded Message --------\n"
        f"Subject: [HD #{number}] Printer\n"
        f"Reply-To: Helpdesk <{old}>\n"
        f"To: Alice Jones <{ALICE}>\n\n"
        "The ticket was assigned to you.\n"
    )
    raw = mail(
        sender=f"Alice Jones <{ALICE}>",
        to="Mallory <mallory@contractor.example>",
        subject=f"Fwd: [HD #{number}] Printer",
        body=body,
        headers={"Cc": "support@example.com"},
    )
    ingest(app, raw, "smtp")

    # The contractor writes alice's From to the reply address he was shown.
    forged = _from_alice(app, number, old, "#close\n")
    assert forged.outcome == "refused"
    assert ticket(app, number).status != Status.CLOSED
    assert rows(app, "token_exposed", ALICE)


def test_a_notice_forwarded_as_an_attachment_shows_her_token_and_replaces_it(app: App) -> None:
    """Outlook forwards as attachment: the notice's whole header, its Message-ID and Reply-To
    with her token among it, travels in a message/rfc822 part."""
    number, old, notice_id = _assigned_to_alice(app)
    raw = (
        f"From: Alice Jones <{ALICE}>\r\n"
        "To: Mallory <mallory@contractor.example>\r\nCc: support@example.com\r\n"
        f"Subject: Fwd: [HD #{number}] Printer\r\nMessage-ID: <fwd-1@client.example.org>\r\n"
        "Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nCan you have a look?\r\n"
        "--b1\r\nContent-Type: message/rfc822\r\n\r\n"
        f"From: Helpdesk <support@example.com>\r\nReply-To: Helpdesk <{old}>\r\n"
        f"Message-ID: {notice_id}\r\nSubject: [HD #{number}] Printer\r\n\r\nAssigned to you.\r\n"
        "--b1--\r\n"
    )
    ingest(app, raw.encode(), "smtp")

    forged = _from_alice(app, number, old, "#close\n")
    assert forged.outcome == "refused"
    assert ticket(app, number).status != Status.CLOSED
