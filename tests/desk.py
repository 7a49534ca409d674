"""A desk with staff of every role, and mail from them as real clients send it, for the reply
command tests (tests/test_commands_*.py). Proof as in production: the reply token of a mail the
desk sent to that person, or the trusted receiving MTA's Authentication-Results."""

from __future__ import annotations

from sqlalchemy import select

from mailgate.app import App
from mailgate.ingest.pipeline import IngestResult, ingest
from mailgate.models import Event, Outbox, Ticket
from tests.conftest import make_settings
from tests.mails import mail

MX = "mx.example.com"
STAFF = [
    {"address": "dispatch@example.com", "name": "Dispatcher", "role": "dispatcher"},
    {"address": "admin@example.com", "name": "Ada Admin", "role": "admin"},
    {"address": "alice@example.com", "name": "Alice Jones", "teams": ["network"]},
    {"address": "bob@example.com", "name": "Bob Brown", "teams": ["network"]},
    {"address": "carol@example.com", "name": "Carol White", "teams": ["printers"]},
    {"address": "sam.lee@example.com", "name": "Sam Lee", "teams": ["printers"]},
    {"address": "sam.fox@example.com", "name": "Sam Fox", "teams": ["printers"]},
]
REQUESTER = "dana@example.com"


def desk(tmp_path, db_url, clock, **overrides: object) -> App:
    values: dict[str, object] = {"acknowledgements": {"trusted_authserv_ids": [MX]}, "staff": STAFF}
    values.update(overrides)
    return App.build(make_settings(tmp_path, db_url, **values), clock=clock)


def open_ticket(app: App, **kwargs: object) -> int:
    result = ingest(app, mail(sender=f"Dana Smith <{REQUESTER}>", **kwargs), "smtp")
    assert result.outcome == "new_ticket", result.trace
    return result.ticket_number


def rows(app: App, kind: str | None = None, to: str | None = None) -> list[Outbox]:
    with app.sessions() as s:
        query = select(Outbox).order_by(Outbox.id)
        if kind:
            query = query.where(Outbox.kind == kind)
        found = list(s.scalars(query))
    return [r for r in found if to is None or r.recipients == [to]]


def reply_address(row: Outbox) -> str:
    return row.headers["Reply-To"].split("<")[1].rstrip(">")


def ticket(app: App, number: int) -> Ticket:
    with app.sessions() as s:
        found = s.scalar(select(Ticket).where(Ticket.number == number))
        assert found is not None
        found.assignee, found.requester  # noqa: B018 (loaded for the test, after the session)
        return found


def events(app: App, number: int, action: str | None = None) -> list[Event]:
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        query = select(Event).where(Event.ticket_id == t.id).order_by(Event.id)
        if action:
            query = query.where(Event.action == action)
        return list(s.scalars(query))


def command(
    app: App,
    number: int,
    body: str,
    *,
    sender: str = "dispatch@example.com",
    proof: str = "dmarc",
    authentication_results: list[str] | None = None,
    html: str | None = None,
    message_id: str | None = "auto",
) -> IngestResult:
    """A reply on ticket `number` from `sender` whose new text is `body`. proof: "dmarc" (the
    trusted MTA's pass for the From's domain), "token" (to the reply address of the last mail
    the desk sent `sender` on the ticket) or "none" (a From header and the tag only)."""
    to, above = "support@example.com", authentication_results or []
    if proof == "dmarc":
        above = [*above, f"{MX}; dmarc=pass header.from={sender.split('@')[1]}"]
    elif proof == "token":
        mine = [r for r in rows(app, to=sender) if r.ticket_id == ticket(app, number).id]
        assert mine, f"the desk sent {sender} nothing on ticket {number}"
        to = reply_address(mine[-1])
    raw = mail(
        sender=sender,
        to=to,
        subject=f"Re: [HD #{number}] Printer on 3rd floor jams",
        body=None if html is not None else body,
        html=html,
        message_id=message_id,
    )
    headers = "".join(f"Authentication-Results: {v}\r\n" for v in above).encode()
    return ingest(app, headers + raw, "smtp")


def receipt(app: App, to: str = "dispatch@example.com", kind: str = "command_receipt") -> Outbox:
    found = rows(app, kind, to)
    assert found, f"no {kind} to {to}"
    return found[-1]
