"""Step route: a ticket this mail opened gets what its alert source and the routing rules say.

An alert source's mail (step alerts) makes the ticket its alert's: the alert key, the source's
category and the priority of the alert's state. Then the [[routes]] rules, in order, each
setting the fields no earlier one set (routing/rules.py). Every change is an event by
"mailgate" whose evidence names the rule ("route printers", "alert nagios"); a rule that assigns
opens the ticket for its assignee, and the relay tells them (item.assigned). The deadlines are
computed again once after all changes, so the acknowledgement (notify, after this step) promises
the routed priority's. What nothing set stays for the dispatcher, whose notice says which rules
matched and what each set.
"""

from __future__ import annotations

from mailgate import people, tickets
from mailgate.addresses import fold_address
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.models import MessageKind, Status, Ticket
from mailgate.routing import patterns
from mailgate.routing.rules import Facts, Hit, decide, find_staff
from mailgate.sla import policy as sla


def route(item: Incoming) -> Outcome | None:
    ticket, message = item.ticket, item.message
    if ticket is None or message is None or message.kind != MessageKind.NEW_TICKET:
        return None  # a reply, or mail stored on no ticket: only a new ticket is routed
    settings = item.app.settings
    already = _alert_ticket(item, ticket) if item.alert is not None else {}
    changed = bool(already)
    if settings.routes:
        hits, notes = decide(settings.routes, facts_of(item), already)
        for note in notes:
            item.note("route", note)
        for hit in hits:
            changed = _apply(item, ticket, hit) or changed
        item.route_rules = hits
        if not hits:
            item.note("route", "no routing rule matched: the dispatcher decides")
    if changed:
        sla.set_deadlines(settings, ticket)
    return None


def facts_of(item: Incoming) -> Facts:
    mail = item.mail
    recipients = {fold_address(a) for a in item.envelope_recipients}
    recipients |= {fold_address(a) for _, a in mail.to + mail.cc}
    return Facts(
        recipients=recipients,
        senders={fold_address(mail.from_addr), fold_address(item.sender.address)},
        subject=mail.subject,
        body=mail.text[: patterns.BODY_PREFIX_CHARS],
    )


def _alert_ticket(item: Incoming, ticket: Ticket) -> dict[str, str]:
    """The alert's key, category and priority on its new ticket; returns the fields it set."""
    alert = item.alert
    assert alert is not None
    changes = {"category": alert.source.category, "priority": alert.priority}
    kwargs = {"channel": item.source, "now": item.now, "evidence": f"alert {alert.source.name}"}
    tickets.set_alert_key(item.session, ticket, alert.key, **kwargs)
    tickets.set_category(item.session, ticket, alert.source.category, actor="mailgate", **kwargs)
    tickets.set_priority(item.session, ticket, alert.priority, actor="mailgate", **kwargs)
    item.note("route", f"alert {alert.key}: category {alert.source.category}, priority {alert.priority}")
    return changes


def _apply(item: Incoming, ticket: Ticket, hit: Hit) -> bool:
    """What `hit` sets, through tickets.py; True when something changed."""
    session, settings = item.session, item.app.settings
    kwargs = {"actor": "mailgate", "channel": item.source, "now": item.now, "evidence": f"route {hit.rule.name}"}
    changed = False
    if "category" in hit.sets:
        changed = tickets.set_category(session, ticket, hit.sets["category"], **kwargs) or changed
    if "priority" in hit.sets:
        changed = tickets.set_priority(session, ticket, hit.sets["priority"], **kwargs) or changed
    if "team" in hit.sets:
        changed = tickets.set_team(session, ticket, hit.sets["team"], **kwargs) or changed
    if "assignee" in hit.sets:
        # The config was checked to name exactly one staff member. Looked up after the ticket
        # took its number (identify's rule): a staff member new to the store is one insert, and
        # a deadlock with a concurrent mail creating the same person is retried by ingest().
        (member,) = find_staff(settings.staff, hit.sets["assignee"])
        person = people.person_for(session, settings, member.address, member.name, item.now)
        tickets.assign(session, ticket, person, **kwargs)
        tickets.set_status(session, ticket, Status.OPEN, **kwargs)
        item.assigned = person
        hit.sets["assignee"] = f"{person.name} <{person.address}>" if person.name else person.address
    sets = ", ".join(f"{k} {v}" for k, v in hit.sets.items()) or "nothing (earlier rules set its fields)"
    item.note("route", f"rule {hit.rule.name} matched ({'; '.join(hit.why)}): {sets}")
    return changed
