"""Step breaker: no source of mail may make mailgate open tickets and send mail without end.

A robot that answers every mail (an autoresponder behind the dispatcher's or a requester's
address, another help desk answering from a new VERP address each time) turns each of our mails
into a new ticket, and each new ticket into an acknowledgement and a dispatcher notice. Whatever
the robot does, it has to open tickets to keep that going, so the breaker counts new tickets per
source: the sender's exact address, its folded address (case and +suffix do not count, see
addresses.py) and its domain (not the domains of our own addresses, where an internal help desk's
employees all live, nor breaker.exempt_domains). Beyond a limit the source is *tripped*: its mail
is stored on the sender's latest open ticket (else on one ticket per trip) with no outgoing mail
at all, and the dispatcher gets one warning that says so and how to lift it. Each held mail keeps
the trip on for another window; `mailgate limits lift SOURCE` ends it. Lifting an address lets it
through its domain's trip (exempt_from_domain), the domain's other senders stay held. An alert source's new
alerts count as one source of their own, `alert:<name>`, against its alerts.new_tickets limit
(ingest/alerts.py): a monitoring outage is many distinct alerts at once. Held alerts go on the
trip's own ticket, each with an event naming its key (HELD_ALERT), so its repeats and its
recovery find it there.

Mail from our own addresses (the dispatcher's included) that threads into no ticket opens none
and sends nothing: a robot behind one of them would otherwise answer our every notice with a
ticket. It is stored on no ticket, as automatic mail, and the trace says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select, text
from sqlalchemy.orm import Session

from mailgate import people, tickets
from mailgate.addresses import domain_of, fold_address
from mailgate.config import Rate, Settings
from mailgate.db import advisory_key
from mailgate.ingest.authentication import proves_from
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.store import store_message
from mailgate.languages import language_of
from mailgate.models import BreakerEvent, BreakerTrip, MessageKind, Person, Status, Ticket
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail
from mailgate.reasons import Reason

_OPEN = (Status.NEW, Status.OPEN, Status.PENDING)
HELD_ALERT = "alert_held"  # the event naming the key of an alert held on a ticket


def sources_of(settings: Settings, address: str) -> list[tuple[str, Rate]]:
    """The sources `address` counts towards, narrowest first, each with its limit."""
    config = settings.breaker
    found = [(f"sender:{address.lower()}", config.per_sender), (f"address:{fold_address(address)}", config.per_address)]
    domain = domain_of(address)
    if domain and domain not in exempt_domains(settings):
        found.append((f"domain:{domain}", config.per_domain))
    return [(key[:330], rate) for key, rate in found]


def exempt_domains(settings: Settings) -> set[str]:
    """Domains limited by address only: ours, and breaker.exempt_domains."""
    return {domain_of(a) for a in settings.addresses.all_own()} | set(settings.breaker.exempt_domains)


def active_trips(session: Session, keys: list[str], now: datetime) -> list[BreakerTrip]:
    return list(
        session.scalars(
            select(BreakerTrip)
            .where(BreakerTrip.source.in_(keys), BreakerTrip.lifted_at.is_(None), BreakerTrip.until > now)
            .order_by(BreakerTrip.id)
        )
    )


@dataclass
class Record:
    """What the store knows of some sources, read in two queries: their trips and the new
    tickets they opened. Events older than every window are pruned as they are met, so each
    source has at most about its limit of them."""

    trips: list[BreakerTrip]
    events: dict[str, list[tuple[int, datetime]]]  # source -> (event id, when)

    @classmethod
    def read(cls, session: Session, keys: list[str], now: datetime, since: datetime) -> Record:
        """The trips of `keys` in force at `now` or lifted since `since` (a lift before the
        oldest window changes no count), and their events."""
        in_force = and_(BreakerTrip.lifted_at.is_(None), BreakerTrip.until > now)
        query = select(BreakerTrip).where(BreakerTrip.source.in_(keys), or_(in_force, BreakerTrip.lifted_at >= since))
        trips = list(session.scalars(query.order_by(BreakerTrip.id)))
        events: dict[str, list[tuple[int, datetime]]] = {key: [] for key in keys}
        columns = select(BreakerEvent.source, BreakerEvent.id, BreakerEvent.at)
        for source, event_id, at in session.execute(columns.where(BreakerEvent.source.in_(keys))):
            events[source].append((event_id, at))
        return cls(trips, events)

    def in_force(self, now: datetime) -> list[BreakerTrip]:
        return [t for t in self.trips if t.lifted_at is None and t.until > now]

    def count(self, key: str, rate: Rate, at: datetime) -> int:
        """New tickets `key` opened in the window before `at`, not counting those before a lift."""
        since = at - timedelta(minutes=rate.window_minutes)
        lifts = [t.lifted_at for t in self.trips if t.source == key and t.lifted_at is not None]
        lifted = max(lifts, default=None)
        return sum(1 for _, when in self.events[key] if when >= since and (lifted is None or when > lifted))

    def stale(self, sources: list[tuple[str, Rate]], at: datetime) -> list[int]:
        """Events outside their source's window: they will never count again."""
        return [
            event_id
            for key, rate in sources
            for event_id, when in self.events[key]
            if when < at - timedelta(minutes=rate.window_minutes)
        ]


def breaker(item: Incoming) -> Outcome | None:
    """Goes on when the mail may open its ticket (or opens none); ends the pipeline when held."""
    if not opens_ticket(item):
        return None
    # The new ticket's requester: the sender, or whom a proven staff member forwarded it for
    # (the dispatcher forwarding from our own address included).
    session, settings, sender = item.session, item.app.settings, item.requester
    if people.is_own_address(settings, sender.address):
        item.note(
            "breaker",
            f"from our own address {sender.address} and on no ticket: stored, opens no ticket and sends no mail",
        )
        own = Reason("from_own_address", f"from our own address {sender.address}", address=sender.address)
        item.reasons = [*item.reasons, own]  # kept on the message
        item.message = store_message(item, None, MessageKind.AUTO)
        return Outcome.AUTO
    # History (`mailgate import`) sends no mail, so there is no loop to break; and its hundreds
    # of old mails from one person are not a robot.
    if not settings.breaker.enabled or item.history is not None:
        return None
    sources = sources_of(settings, sender.address)
    trusted = settings.acknowledgements.trusted_authserv_ids
    if item.alert is not None:
        # An alert source's new alerts count against its own limit (ingest/alerts.py).
        limit = item.alert.source.new_tickets
        sources = [(f"alert:{item.alert.source.name}", Rate(count=limit.count, window_minutes=limit.window_minutes))]
    elif item.on_behalf is not None or proves_from(item.mail.message, trusted, domain_of(sender.address)):
        # The trusted MTA proved this sender's domain (DMARC pass): forged mail in that domain's
        # name, which is what trips a domain, must not hold the real people of it. A proven
        # robot is still held by its own address. A proven staff member's forwards vouch alike.
        sources = [(key, rate) for key, rate in sources if not key.startswith("domain:")]
    _one_at_a_time(session, [key for key, _ in sources])
    # What earlier transactions recorded, which nothing pending here changes: no flush.
    with session.no_autoflush:
        oldest = item.arrived - timedelta(minutes=max(rate.window_minutes for _, rate in sources))
        record = Record.read(session, [key for key, _ in sources], item.now, oldest)
    trips = record.in_force(item.now)
    domain_trip = next((t for t in trips if t.source.startswith("domain:")), None)
    if domain_trip is not None and _vouched_for(session, sources, domain_trip):
        # An admin lifted this address out of its domain's trip: the domain no longer counts it
        # (its count is at the limit still, which would trip it anew).
        item.note("breaker", f"{domain_trip.source} is held, but lifted for this address")
        sources = [(key, rate) for key, rate in sources if key != domain_trip.source]
        trips = [t for t in trips if t is not domain_trip]
    over = next(((k, r) for k, r in sources if record.count(k, r, item.arrived) >= r.count), None)
    if trips:
        return _hold(item, trips[0], tripped=None)
    if over is not None:
        key, rate = over
        trip = BreakerTrip(
            source=key,
            limit=f"{rate.count} new tickets in {rate.window_minutes} minutes",
            window_minutes=rate.window_minutes,
            tripped_at=item.now,
            until=item.now,
            held=0,
            lifted_by="",
        )
        session.add(trip)
        return _hold(item, trip, tripped=rate)
    if stale := record.stale(sources, item.arrived):
        session.execute(delete(BreakerEvent).where(BreakerEvent.id.in_(stale)))
    session.add_all([BreakerEvent(source=key, at=item.arrived) for key, _ in sources])
    return None


def _vouched_for(session: Session, sources: list[tuple[str, Rate]], domain_trip: BreakerTrip) -> bool:
    """Did an admin lift this sender out of its domain's trip (exempt_from_domain)?"""
    keys = [key for key, _ in sources if not key.startswith("domain:")]
    return _exemption(session, keys, domain_trip) is not None


def _exemption(session: Session, keys: list[str], domain_trip: BreakerTrip) -> int | None:
    """The id of an exemption of one of `keys` from `domain_trip`, made since it tripped. Only an
    exemption counts: an address's own trip lifted before its domain tripped vouches for nothing."""
    query = select(BreakerTrip.id).where(
        BreakerTrip.source.in_(keys),
        BreakerTrip.limit == _exempted_from(domain_trip),
        BreakerTrip.lifted_at >= domain_trip.tripped_at,
    )
    return session.scalar(query.limit(1))


def _exempted_from(domain_trip: BreakerTrip) -> str:
    """The limit an exemption row names: the domain trip it lets its address through."""
    return f"lifted from {domain_trip.source}"[:100]


def _one_at_a_time(session: Session, keys: list[str]) -> None:
    """On PostgreSQL, mails of one source pass this step one after the other (until commit):
    a robot's parallel flood would otherwise see the same count in each transaction, open a
    ticket in each, and trip (and warn the dispatcher) in each. SQLite runs one writer at a time
    anyway. Keys in one order, so that two mails sharing two sources cannot deadlock."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for key in sorted(keys):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(f"breaker:{key}")})


def opens_ticket(item: Incoming) -> bool:
    """Would apply open a new ticket for this mail? (Its rules, read before it runs.)"""
    if item.reaction:
        return False
    ticket = item.thread.ticket
    if ticket is None:
        return True
    window = item.app.settings.tickets.reopen_window_days
    return not item.reasons and tickets.is_past_reopen_window(ticket, item.now, window)


def _hold(item: Incoming, trip: BreakerTrip, *, tripped: Rate | None) -> Outcome:
    """Store the mail without a ticket of its own and without any outgoing mail; `tripped`: the
    limit this mail went over, when it tripped the source just now."""
    session, settings, sender = item.session, item.app.settings, item.requester
    # People before the ticket number (see identify): the dispatcher is told of a new trip.
    dispatcher = people.dispatcher(session, settings, item.now) if tripped is not None else None
    # An alert is not held on the sender's latest ticket, another alert's, which that alert's
    # recovery resolves with this one still down: on the trip's own ticket, with its key.
    ticket = _latest_open_ticket(session, sender) if item.alert is None else None
    if ticket is None and trip.ticket_id is not None:
        ticket = session.get(Ticket, trip.ticket_id)
    if ticket is None:
        ticket = tickets.create_ticket(
            session,
            # The mails it holds keep their subjects; the ticket says what it is.
            subject=f"Mail held by the circuit breaker: {trip.source}",
            requester=sender,
            priority=settings.tickets.default_priority,
            channel=item.source,
            now=item.arrived,
            first_response_due=None,  # a robot's mail, held: no promise to keep
        )
        trip.ticket_id = ticket.id
    trip.held += 1
    trip.until = max(trip.until, item.now + timedelta(minutes=trip.window_minutes))
    item.ticket, item.ticket_number = ticket, ticket.number
    item.note(
        "breaker",
        f"{trip.source} is over its limit ({trip.limit}): held on ticket {ticket.number}, "
        f"no ticket of its own and no mail sent (`mailgate limits lift {trip.source}` ends it)",
    )
    item.message = message = store_message(item, ticket, MessageKind.HELD)
    session.flush()  # the event names the message by its id; the warning names the trip
    tickets.record(
        session,
        ticket,
        actor=sender.address,
        action="held",
        channel=item.source,
        at=item.now,
        message_id=message.id,
        new=f"{trip.source}: over {trip.limit}",
    )
    if item.alert is not None:
        # What lets the alert's repeats and its recovery find this ticket (ingest/alerts.py).
        tickets.record(
            session,
            ticket,
            actor=sender.address,
            action=HELD_ALERT,
            channel=item.source,
            at=item.now,
            field="alert_key",
            new=item.alert.key,
            message_id=message.id,
            evidence=f"alert {item.alert.source.name}",
        )
    if dispatcher is not None and tripped is not None:
        _warn(item, trip, ticket, dispatcher, tripped)
    return Outcome.HELD


def _latest_open_ticket(session: Session, sender: Person) -> Ticket | None:
    return session.scalar(
        select(Ticket)
        .where(Ticket.requester_id == sender.id, Ticket.status.in_(_OPEN))
        .order_by(Ticket.id.desc())
        .limit(1)
    )


def _warn(item: Incoming, trip: BreakerTrip, ticket: Ticket, dispatcher: Person, rate: Rate) -> None:
    """The dispatcher's one warning for this trip."""
    app = item.app
    context = {
        "source": trip.source,
        "limit": Reason("breaker_limit", trip.limit, count=rate.count, minutes=rate.window_minutes),
        "sender": item.sender.address,
        "subject": item.mail.subject[:200],
    }
    outgoing = OutgoingMail(
        "breaker_warning",
        f"breaker_warning:{trip.id}",
        ticket,
        dispatcher,
        "breaker_warning",
        context,
        auto_submitted=AutoSubmitted.GENERATED,
        language=language_of(app.settings, dispatcher.address),
    )
    # The trip is new in this transaction, so nothing was queued for it yet.
    item.send("breaker", outgoing, what="warning", ticket_is_new=True)


def trips_in_force(session: Session, now: datetime) -> list[BreakerTrip]:
    """Every source whose mail is held now, longest held first."""
    query = select(BreakerTrip).where(BreakerTrip.lifted_at.is_(None), BreakerTrip.until > now)
    return list(session.scalars(query.order_by(BreakerTrip.tripped_at, BreakerTrip.id)))


def keys_for(source: str) -> list[str]:
    """The sources an admin means: a key as the warning names it ("domain:example.net"), an
    address (its exact and its folded form) or a domain."""
    source = source.strip().lower()
    if source.partition(":")[0] in ("sender", "address", "domain", "alert"):
        return [source]
    if "@" in source:
        return sorted({f"sender:{source}", f"address:{fold_address(source)}"})
    return [f"domain:{source.lstrip('@')}"]


def exempt_from_domain(session: Session, address: str, now: datetime, by: str) -> tuple[BreakerTrip | None, bool]:
    """Let `address` (and its +variants) through the trip of its domain, if that is in force;
    the domain's other senders stay held. Returns the domain's trip and whether this lifted
    anything (False: the address was lifted from it already).

    The exemption is a lifted trip of the address itself naming the domain trip (_exempted_from;
    no new table for a rare act of an admin): breaker() lets a sender with such a row made since
    the domain tripped through it. It ends with that trip; when the domain trips anew, the
    address is held again like the rest, and the dispatcher is warned anew."""
    address = address.strip().lower()
    domain = next(iter(active_trips(session, [f"domain:{domain_of(address)}"], now)), None)
    if domain is None:
        return None, False
    keys = keys_for(address)
    if _exemption(session, keys, domain) is not None:
        return domain, False
    by = by[:320]
    session.add(
        BreakerTrip(
            source=f"address:{fold_address(address)}"[:330],
            limit=_exempted_from(domain),
            window_minutes=domain.window_minutes,
            tripped_at=now,
            until=now,
            held=0,
            lifted_at=now,
            lifted_by=by,
        )
    )
    ticket = session.get(Ticket, domain.ticket_id) if domain.ticket_id else None
    tickets.record(
        session,
        ticket,
        actor=by,
        action="breaker_lifted",
        channel="cli",
        at=now,
        new=f"{domain.source} lifted for {address}",
    )
    return domain, True


def exemptions(session: Session, trip: BreakerTrip) -> list[str]:
    """The addresses lifted from domain trip `trip` (exempt_from_domain), for `limits list`."""
    query = select(BreakerTrip.source).where(
        BreakerTrip.limit == _exempted_from(trip), BreakerTrip.lifted_at >= trip.tripped_at
    )
    return sorted({source.partition(":")[2] for source in session.scalars(query)})


def lift(session: Session, source: str, now: datetime, by: str) -> list[BreakerTrip]:
    """End the trips in force for `source`: its next mail opens a ticket again, and its count
    starts afresh (what it sent before the lift no longer counts). Returns the trips lifted."""
    trips = active_trips(session, keys_for(source), now)
    for trip in trips:
        trip.lifted_at, trip.lifted_by = now, by[:320]
        ticket = session.get(Ticket, trip.ticket_id) if trip.ticket_id else None
        tickets.record(
            session, ticket, actor=by, action="breaker_lifted", channel="cli", at=now, new=f"{trip.source} lifted"
        )
    return trips
