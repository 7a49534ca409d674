"""Step alerts: mail of a configured monitoring system ([[alerts]]) is one ticket per alert.

The first source whose senders and subject pattern match reads the subject (routing/alerts.py):
problem or recovery, its priority, and its alert key. Then:
- a repeat of an alert whose ticket is still open (new, open, pending) is stored on that ticket
  and ends the pipeline here: no new ticket, no acknowledgement, no notice, no relay. A graver
  state than the ticket's priority (WARNING, then CRITICAL) raises it; a person's choice is
  never lowered;
- a recovery is stored on that ticket with an event saying so (the note), and resolves it when
  the source says resolve_on_recovery; a recovery of no open alert is stored on the alert's last
  ticket, or on none;
- a new problem goes on to open its own ticket, whatever classify made of it: monitoring mail
  is often Auto-Submitted or from a robot address, and an alert is a request all the same. It
  keeps (or gets) an automatic reason, so it is never acknowledged; step route gives the
  ticket its key, category and priority.

Repeats are replies to the alert's ticket, so the circuit breaker (which counts new tickets) never
holds them. A burst of distinct alerts opens a ticket each, and the breaker counts those as the
source `alert:<name>` against the source's own limit (new_tickets, default 30 in 60 minutes,
instead of breaker.per_sender, which one outage would trip at once): past it, the source's new
alerts are held on one ticket of the trip without mail, the dispatcher is warned once, and
`mailgate limits lift alert:<name>` ends it. Repeats of alerts that have a ticket still go on.
A held alert keeps its key on that ticket (an event, see breaker.HELD_ALERT): its repeats join
it there, and its recovery is noted there; it resolves no such ticket, which holds other alerts
that may still be down.
"""

from __future__ import annotations

from sqlalchemy import select, text

from mailgate import subject as subjects
from mailgate import tickets
from mailgate.addresses import domain_of, fold_address
from mailgate.db import advisory_key
from mailgate.ingest.authentication import authentication_failure, from_verdict
from mailgate.ingest.breaker import HELD_ALERT
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.store import store_message
from mailgate.ingest.thread import ThreadDecision
from mailgate.models import BreakerTrip, Event, MessageKind, Status, Ticket
from mailgate.reasons import Reason
from mailgate.routing import patterns
from mailgate.routing.alerts import RANK, Alert, read, source_for
from mailgate.sla import policy as sla

_OPEN = (Status.NEW, Status.OPEN, Status.PENDING)


def alerts(item: Incoming) -> Outcome | None:
    sources, mail = item.app.settings.alerts, item.mail
    if not sources or item.bounce is not None:
        return None  # a bounce reports on our mail, whoever sent it
    if item.sender.is_staff or subjects.strip_prefixes(mail.subject) != mail.subject.strip():
        # A monitoring system writes no "Re:" or "Fwd:": a person answering or forwarding an
        # alert (a source known by its subject alone would match them) writes to the desk.
        return None
    senders = {fold_address(mail.from_addr), fold_address(item.sender.address)}
    try:
        source = source_for(sources, senders, mail.subject)
    except patterns.TimedOut as exc:
        item.note("alerts", f"subject pattern {str(exc)[:80]!r} ran out of time on this mail: not an alert")
        return None
    if source is None:
        return None
    trusted = item.app.settings.acknowledgements.trusted_authserv_ids
    if failure := authentication_failure(mail.message, trusted, domain_of(mail.from_addr)):
        # Anyone can write the monitoring system's From: a mail our MTA failed is not its alert
        # (a forged recovery would resolve the incident). It goes on as ordinary mail.
        item.note("alerts", f"matches alert source {source.name} but failed authentication ({failure}): not an alert")
        return None
    if source.require_proof and from_verdict(mail.message, trusted, domain_of(mail.from_addr)) is None:
        item.note("alerts", f"matches alert source {source.name}, which requires proof: not proven, not an alert")
        return None
    item.alert = alert = read(source, mail.subject)
    state = alert.state or "no state word"
    # Kept on the stored message, and what keeps a new alert from being acknowledged.
    english = f"alert source {source.name} ({state})"
    item.reasons = [*item.reasons, Reason("alert_source", english, name=source.name, state=alert.state)]
    _one_at_a_time(item, alert.key)
    ticket = _open_ticket(item, source.name, alert.key)
    if ticket is not None:
        return _on_ticket(item, ticket, alert)
    if alert.recovery:
        return _recovery_of_nothing(item, alert)
    item.note("alerts", f"alert {alert.key} ({state}, priority {alert.priority}): a new alert, opens its ticket")
    # An alert is a request even when it looks like a reaction (a robot's address, a null
    # sender): it opens a ticket, automatic (never acknowledged). Its key decides the ticket,
    # not what it quotes.
    item.reaction = False
    if item.thread.ticket is not None or item.thread.linked is not None:
        item.thread = ThreadDecision()
    return None


def _one_at_a_time(item: Incoming, key: str) -> None:
    """On PostgreSQL, mails of one alert pass here one after the other (until commit): two
    copies of a new alert arriving at once would otherwise open a ticket each. SQLite runs one
    writer at a time anyway."""
    if item.session.get_bind().dialect.name == "postgresql":
        item.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(f"alert:{key}")})


def _open_ticket(item: Incoming, source: str, key: str) -> Ticket | None:
    """The alert's open ticket: its own, else the one the circuit breaker held it on."""
    query = select(Ticket).where(Ticket.alert_key == key, Ticket.status.in_(_OPEN))
    own = item.session.scalar(query.order_by(Ticket.id.desc()).limit(1))
    return own if own is not None else _holding_ticket(item, source, key)


def _holding_ticket(item: Incoming, source: str, key: str) -> Ticket | None:
    """The open ticket of a trip of `source` that holds alert `key` (breaker.HELD_ALERT). Only
    the trips' few tickets are searched, by their events."""
    trips = select(BreakerTrip.ticket_id).where(BreakerTrip.source == f"alert:{source}")
    query = (
        select(Ticket)
        .join(Event, Event.ticket_id == Ticket.id)
        .where(Ticket.id.in_(trips), Ticket.status.in_(_OPEN), Event.action == HELD_ALERT, Event.new == key)
    )
    return item.session.scalar(query.order_by(Ticket.id.desc()).limit(1))


def _store(item: Incoming, ticket: Ticket | None) -> int:
    if ticket is not None:
        item.ticket, item.ticket_number = ticket, ticket.number
    item.message = message = store_message(item, ticket, MessageKind.AUTO)
    item.session.flush()  # the event names the message by its id
    return message.id


def _on_ticket(item: Incoming, ticket: Ticket, alert: Alert) -> Outcome:
    session, source = item.session, alert.source
    evidence = f"alert {source.name}"
    message_id = _store(item, ticket)
    kwargs = {"channel": item.source, "now": item.now, "evidence": evidence}
    if alert.recovery:
        item.note("alerts", f"alert {alert.key} recovered ({alert.state}): noted on ticket {ticket.number}")
        tickets.record(
            session,
            ticket,
            actor="mailgate",
            action="alert_recovered",
            channel=item.source,
            at=item.now,
            message_id=message_id,
            new=f"{alert.state}: {item.mail.subject[:200]}",
            evidence=evidence,
        )
        if source.resolve_on_recovery and ticket.alert_key != alert.key:
            # The breaker held it on a ticket with others, which may still be down.
            item.note("alerts", f"ticket {ticket.number} holds other alerts too: left for a person to resolve")
        elif source.resolve_on_recovery:
            tickets.set_status(session, ticket, Status.RESOLVED, actor="mailgate", **kwargs)
            item.note("alerts", f"ticket {ticket.number} resolved (alerts.resolve_on_recovery)")
        return Outcome.AUTO
    item.note("alerts", f"alert {alert.key} again ({alert.state or 'no state word'}): on open ticket {ticket.number}")
    tickets.record(
        session,
        ticket,
        actor=item.sender.address,
        action="alert_repeated",
        channel=item.source,
        at=item.now,
        message_id=message_id,
        new=alert.state,
        evidence=evidence,
    )
    # A ticket holding alerts for the breaker makes no promise (no deadlines): it keeps its priority.
    if ticket.alert_key == alert.key and RANK[alert.priority] > RANK.get(ticket.priority, 0):
        tickets.set_priority(session, ticket, alert.priority, actor="mailgate", **kwargs)
        sla.set_deadlines(item.app.settings, ticket)
        item.note("alerts", f"ticket {ticket.number} raised to priority {alert.priority}")
    return Outcome.AUTO


def _recovery_of_nothing(item: Incoming, alert: Alert) -> Outcome:
    """A recovery whose alert has no open ticket (resolved by a person, or never seen): kept on
    the alert's last ticket, which it does not reopen, else on no ticket."""
    query = select(Ticket).where(Ticket.alert_key == alert.key).order_by(Ticket.id.desc()).limit(1)
    last = item.session.scalar(query)
    message_id = _store(item, last)
    where = f"on its last ticket {last.number}, unchanged" if last is not None else "on no ticket"
    item.note("alerts", f"alert {alert.key} recovered ({alert.state}) but has no open ticket: stored {where}")
    if last is not None:
        tickets.record(
            item.session,
            last,
            actor="mailgate",
            action="alert_recovered",
            channel=item.source,
            at=item.now,
            message_id=message_id,
            new=f"{alert.state}: {item.mail.subject[:200]}",
            evidence=f"alert {alert.source.name}",
        )
    return Outcome.AUTO
