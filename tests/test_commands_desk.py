"""Reply commands through ingest(): every command and its Key: value form, the receipt, errors,
HTML-only and top-posted mail, and a command mail delivered twice."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Message, Participant, Person, Status, Ticket, TicketLink
from tests.desk import REQUESTER, command, desk, events, open_ticket, receipt, rows, ticket


@pytest.fixture
def app(tmp_path, db_url, clock):
    application = desk(tmp_path, db_url, clock)
    yield application
    application.close()


def test_the_dispatcher_assigns_and_sets_the_priority_by_replying_to_the_notice(app: App) -> None:
    number = open_ticket(app)
    result = command(app, number, "#assign alice\n#priority urgent\n", proof="token")

    assert result.outcome == "reply"
    t = ticket(app, number)
    assert (t.assignee.address, t.priority, t.status) == ("alice@example.com", "urgent", Status.OPEN)
    body = receipt(app).body
    assert "assignee: - -> alice@example.com" in body
    assert "status: new -> open" in body
    assert "priority: normal -> urgent" in body
    assert "New deadlines: first answer" in body  # urgent has a shorter target than normal
    assert "reply token issued to dispatch@example.com" in body
    row = receipt(app)
    assert row.headers["Auto-Submitted"] == "auto-replied"
    assert row.headers["In-Reply-To"] == f"<{result.message_id}>"
    assert f"[HD #{number}]" in row.headers["Subject"]
    changed = [e for e in events(app, number) if e.field in ("assignee", "priority")]
    assert {e.evidence for e in changed} == {"reply token issued to dispatch@example.com ([HD #1])"}
    with app.sessions() as s:
        message = s.scalar(select(Message).where(Message.message_id == result.message_id))
    assert {e.message_id for e in changed} == {message.id}


def _state(app: App, number: int) -> dict[str, object]:
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        ccs = sorted(
            s.scalars(
                select(Person.address)
                .join(Participant, Participant.person_id == Person.id)
                .where(Participant.ticket_id == t.id, Participant.role == "cc")
            )
        )
        links = list(s.scalars(select(TicketLink.other_id).where(TicketLink.ticket_id == t.id)))
        return {
            "assignee": t.assignee.address if t.assignee else None,
            "priority": t.priority,
            "category": t.category,
            "team": t.team,
            "status": t.status,
            "pending_until": t.pending_until.date().isoformat() if t.pending_until else None,
            "requester": t.requester.address,
            "cc": ccs,
            "merged": t.merged_into_id is not None,
            "links": len(links),
        }


# (commands, what the ticket shows after, the receipt line): the ticket starts assigned to bob,
# status open, with cc eve@example.org, and a ticket 2 to merge or link with.
CASES = [
    ("#assign alice", {"assignee": "alice@example.com"}, "assignee: bob@example.com -> alice@example.com"),
    ("Assign: alice@example.com", {"assignee": "alice@example.com"}, "-> alice@example.com"),
    ("Owner: alice", {"assignee": "alice@example.com"}, "-> alice@example.com"),
    ("#assign Alice Jones", {"assignee": "alice@example.com"}, "-> alice@example.com"),
    ("#assign me", {"assignee": "dispatch@example.com"}, "-> dispatch@example.com"),
    ("#take", {"assignee": "dispatch@example.com"}, "-> dispatch@example.com"),
    ("#unassign", {"assignee": None}, "assignee: bob@example.com -> -"),
    ("#priority high", {"priority": "high"}, "priority: normal -> high"),
    ("Priority: low", {"priority": "low"}, "priority: normal -> low"),
    ("#category hardware", {"category": "hardware"}, "category: - -> hardware"),
    ("Category: hardware", {"category": "hardware"}, "category: - -> hardware"),
    ("#team printers", {"team": "printers"}, "team: - -> printers"),
    ("Team: printers", {"team": "printers"}, "team: - -> printers"),
    ("#status resolved", {"status": "resolved"}, "status: open -> resolved"),
    ("Status: pending", {"status": "pending"}, "status: open -> pending"),
    (
        "#pending until 2026-12-10",
        {"status": "pending", "pending_until": "2026-12-10"},
        "pending until: - -> 2026-12-10",
    ),
    ("Pending: until 10.12.2026", {"status": "pending", "pending_until": "2026-12-10"}, "status: open -> pending"),
    ("#close", {"status": "closed"}, "status: open -> closed"),
    ("#close replaced the toner", {"status": "closed"}, "status: open -> closed"),
    ("#cc add frank@example.org", {"cc": ["eve@example.org", "frank@example.org"]}, "cc: - -> frank@example.org"),
    ("Cc: add frank@example.org", {"cc": ["eve@example.org", "frank@example.org"]}, "cc: - -> frank@example.org"),
    ("#cc remove eve@example.org", {"cc": []}, "cc: eve@example.org -> -"),
    # The earlier requester stays on the ticket as a cc: their mail still threads.
    ("#requester gus@example.org", {"requester": "gus@example.org", "cc": [REQUESTER, "eve@example.org"]}, "-> gus@"),
    ("Requester: gus@example.org", {"requester": "gus@example.org", "cc": [REQUESTER, "eve@example.org"]}, "-> gus@"),
    ("#merge 2", {"merged": True, "status": "closed"}, "merged into: - -> #2"),
    ("Merge: [HD #2]", {"merged": True, "status": "closed"}, "merged into: - -> #2"),
    ("#link 2", {"links": 1}, "linked to: - -> #2"),
    ("Link: 2", {"links": 1}, "linked to: - -> #2"),
]


@pytest.mark.parametrize(("text", "after", "line"), CASES, ids=[c[0] for c in CASES])
def test_every_command_and_its_key_value_form_changes_the_ticket(app: App, text: str, after: dict, line: str) -> None:
    number = open_ticket(app, headers={"Cc": "eve@example.org"})
    open_ticket(app, subject="The same printer")
    assert command(app, number, "#assign bob").outcome == "reply"
    before = _state(app, number)

    result = command(app, number, text + "\n")

    assert result.outcome == "reply", result.trace
    assert _state(app, number) == {**before, **after}
    assert line in receipt(app).body


def test_reopen_opens_a_resolved_ticket(app: App) -> None:
    number = open_ticket(app)
    command(app, number, "#status resolved")
    command(app, number, "#reopen")
    assert ticket(app, number).status == Status.OPEN
    assert "status: resolved -> open" in receipt(app).body


def test_a_note_is_stored_internal_and_is_no_first_response(app: App) -> None:
    number = open_ticket(app)
    result = command(
        app, number, "#note the vendor called back\nthey ship a new drum tomorrow", sender="dispatch@example.com"
    )

    with app.sessions() as s:
        message = s.scalar(select(Message).where(Message.message_id == result.message_id))
        assert message.internal is True
        assert message.ticket.number == number
    assert ticket(app, number).first_response_at is None
    assert "saved as internal" in receipt(app).body
    assert "nothing needed changing" not in receipt(app).body


def test_a_mail_of_commands_only_is_stored_on_the_ticket(app: App) -> None:
    number = open_ticket(app)
    result = command(app, number, "#priority high")
    with app.sessions() as s:
        message = s.scalar(select(Message).where(Message.message_id == result.message_id))
        assert message.ticket.number == number
        assert message.text_full == "#priority high"
    assert ticket(app, number).first_response_at is None  # commands answer nobody


def test_commands_in_an_html_only_mail(app: App) -> None:
    number = open_ticket(app)
    html = "<html><body><div>#Assign alice<br>Priority: high<br></div><div>Thanks</div></body></html>"
    command(app, number, "", html=html)
    t = ticket(app, number)
    assert (t.assignee.address, t.priority) == ("alice@example.com", "high")


def test_commands_at_the_top_of_a_mobile_reply_above_the_quote(app: App) -> None:
    number = open_ticket(app)
    body = (
        "#priority high\n#team network\n\nSent from my iPhone\n\n"
        "> On 23 Nov 2026, at 09:00, IT Help Desk <support@example.com> wrote:\n>\n> #priority low\n"
    )
    command(app, number, body)
    t = ticket(app, number)
    assert (t.priority, t.team) == ("high", "network")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("#asign alice", "unknown command #asign (did you mean #assign?)"),
        ("#assign zed", "unknown person 'zed'"),
        ("#assign alcie", "(did you mean alice@example.com?)"),
        ("#assign sam", "ambiguous: 'sam' is Sam Lee <sam.lee@example.com> or Sam Fox <sam.fox@example.com>"),
        ("#assign dana@example.com", "dana@example.com is not on the staff list"),
        ("#team netwrk", "unknown team 'netwrk' (did you mean network?)"),
        ("#priority hgh", "unknown priority 'hgh' (did you mean high?)"),
        ("#status closed\n#reopen", "ambiguous: '#status closed' and '#reopen' both set the status"),
        ("#merge 99", "there is no ticket #99"),
        ("#merge 1", "#merge names this ticket itself"),
        ("#pending until 2026-11-01", "is not in the future"),
        ("#cc remove nobody@example.org", "nobody@example.org is not a cc of this ticket"),
        ("#requester support@example.com", "is the desk's own address"),
        ("#undo", "nothing to undo"),
    ],
)
def test_a_wrong_line_changes_nothing_and_the_receipt_says_what_and_why(app: App, text: str, problem: str) -> None:
    number = open_ticket(app)
    result = command(app, number, f"#priority urgent\n{text}\n")

    assert result.outcome == "refused"
    t = ticket(app, number)
    assert (t.priority, t.assignee, t.status) == ("normal", None, Status.NEW)
    row = receipt(app)
    assert "Nothing was changed" in row.headers["Subject"]
    assert problem in " ".join(row.body.split())
    assert "#priority urgent\n      -> fine" in row.body
    assert events(app, number, "commands_refused")


@pytest.mark.parametrize(
    ("text", "german", "english"),
    [
        ("#asign alice", "unbekannter Befehl #asign (meinten Sie #assign?)", "unknown command"),
        ("#assign zed", "unbekannte Person 'zed' (schreiben Sie den Namen oder die Adresse", "unknown person"),
        ("#assign alcie", "(meinten Sie alice@example.com?)", "did you mean"),
        ("#assign sam", "mehrdeutig: 'sam' ist Sam Lee <sam.lee@example.com> oder Sam Fox", "ambiguous"),
        ("#assign dana@example.com", "dana@example.com steht nicht auf der Mitarbeiterliste", "staff list"),
        ("#team netwrk", "unbekanntes Team 'netwrk' (meinten Sie network?)", "unknown team"),
        ("#priority hgh", "unbekannte Priorität 'hgh' (meinten Sie high?)", "unknown priority"),
        ("#status closed\n#reopen", "mehrdeutig: '#status closed' und '#reopen' setzen beide den Status", "both set"),
        ("#merge 99", "es gibt kein Ticket #99", "there is no ticket"),
        ("#merge 1", "#merge nennt dieses Ticket selbst", "names this ticket itself"),
        ("#pending until 2026-11-01", "2026-11-01 liegt nicht in der Zukunft (ein Datum nach heute)", "future"),
        ("#cc remove nobody@example.org", "nobody@example.org ist kein Cc dieses Tickets", "is not a cc"),
        ("#requester support@example.com", "ist die eigene Adresse des Desks", "own address"),
        ("#undo", "nichts rückgängig zu machen", "nothing to undo"),
    ],
)
def test_a_german_staff_members_receipt_says_what_and_why_in_german(
    tmp_path, db_url, clock, text: str, german: str, english: str
) -> None:
    from tests.desk import STAFF

    staff = [{**m, "language": "de"} if m.get("role") == "dispatcher" else m for m in STAFF]
    app = desk(tmp_path, db_url, clock, staff=staff)
    try:
        number = open_ticket(app)
        assert command(app, number, f"#priority urgent\n{text}\n").outcome == "refused"
        body = " ".join(receipt(app).body.split())
        assert german in body
        assert english not in body
        assert "#priority urgent -> in Ordnung" in body
    finally:
        app.close()


def test_the_same_command_mail_delivered_twice_applies_once(app: App) -> None:
    number = open_ticket(app)
    first = command(app, number, "#priority high\n#cc add frank@example.org", message_id="<cmd-1@client.example.org>")
    again = command(app, number, "#priority high\n#cc add frank@example.org", message_id="<cmd-1@client.example.org>")

    assert (first.outcome, again.outcome) == ("reply", "duplicate")
    assert len(rows(app, "command_receipt")) == 1
    assert len([e for e in events(app, number) if e.field in ("priority", "cc")]) == 2


def test_prose_that_starts_like_a_key_is_a_plain_reply(app: App) -> None:
    number = open_ticket(app)
    ack = rows(app, "ack")[0]
    to = ack.headers["Reply-To"].split("<")[1].rstrip(">")
    from tests.mails import mail

    raw = mail(sender=REQUESTER, to=to, subject=f"Re: [HD #{number}]", body="Note: printer broken again\n")
    result = ingest(app, raw, "smtp")
    assert result.outcome == "reply"
    assert not rows(app, "command_receipt", REQUESTER)


def test_a_requester_starting_with_a_hashtag_writes_text(app: App) -> None:
    number = open_ticket(app)
    result = command(app, number, "#thanks for the help!", sender=REQUESTER, proof="token")
    assert result.outcome == "reply"
    assert not rows(app, "command_receipt", REQUESTER)


def test_a_ticket_closed_beyond_the_reopen_window_takes_no_commands(app: App, clock) -> None:
    from datetime import timedelta

    number = open_ticket(app)
    command(app, number, "#close")
    clock.advance(timedelta(days=app.settings.tickets.reopen_window_days + 1))
    result = command(app, number, "#reopen\n#priority high")
    assert result.outcome == "refused"
    assert "takes no more changes" in receipt(app).body
    assert ticket(app, number).status == Status.CLOSED


def test_the_receipt_is_in_the_staff_members_language(tmp_path, db_url, clock) -> None:
    from tests.desk import STAFF

    staff = [{**m, "language": "de"} if m.get("role") == "dispatcher" else m for m in STAFF]
    app = desk(tmp_path, db_url, clock, staff=staff)
    try:
        number = open_ticket(app)
        command(app, number, "#priority high", proof="token")
        command(app, number, "#priorty hoch")
        applied, refused = rows(app, "command_receipt")
        assert applied.headers["Subject"].startswith(f"[HD #{number}] Erledigt")
        assert "Ihre Befehle für" in applied.body
        assert "Authentifiziert durch: Antwortadresse, ausgestellt an dispatch@example.com" in applied.body
        assert "reply token issued" not in applied.body
        assert "  Priorität: normal -> high" in applied.body
        assert "Nichts wurde geändert" in refused.headers["Subject"]
    finally:
        app.close()
