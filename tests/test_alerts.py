"""Alert sources ([[alerts]]): a monitoring system's mail opens one incident ticket per alert,
never acknowledged; repeats join it while it is open; a recovery notes it (and resolves it)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.config import ConfigError, load_settings
from mailgate.ingest.breaker import lift
from mailgate.ingest.pipeline import ingest
from mailgate.models import Event, Message, Status, Ticket
from tests.conftest import make_settings
from tests.mails import mail
from tests.test_ingest import outbox

NAGIOS = {"name": "nagios", "senders": ["nagios@monitor.example.com"]}
GENERATED = {"Auto-Submitted": "auto-generated"}


def desk(tmp_path: Path, db_url: str, clock: FixedClock, *sources: dict, **overrides: object) -> App:
    return App.build(make_settings(tmp_path, db_url, alerts=list(sources or [NAGIOS]), **overrides), clock=clock)


def alert(subject: str, sender: str = "Nagios <nagios@monitor.example.com>", **kwargs: object) -> bytes:
    body = kwargs.pop("body", f"***** Nagios *****\n\n{subject}\nDate/Time: Mon Nov 23 09:00:00 UTC 2026\n")
    return mail(sender=sender, to="support@example.com", subject=subject, body=body, **kwargs)


PROBLEM = "** PROBLEM Service Alert: web01/HTTP is CRITICAL **"
RECOVERY = "** RECOVERY Service Alert: web01/HTTP is OK **"


def tickets_of(app: App) -> list[Ticket]:
    with app.sessions() as s:
        return list(s.scalars(select(Ticket).order_by(Ticket.id)))


def message_count(app: App, ticket: Ticket) -> int:
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(Message).where(Message.ticket_id == ticket.id))


def events(app: App, ticket: Ticket, action: str) -> list[Event]:
    with app.sessions() as s:
        query = select(Event).where(Event.ticket_id == ticket.id, Event.action == action).order_by(Event.id)
        return list(s.scalars(query))


def test_twenty_identical_alerts_make_one_ticket_with_twenty_messages_and_no_acknowledgement(
    tmp_path, db_url, clock
) -> None:
    app = desk(tmp_path, db_url, clock)
    outcomes = []
    for _ in range(20):  # Nagios notifies again every few minutes while it stays critical
        outcomes.append(ingest(app, alert(PROBLEM, headers=GENERATED), "smtp").outcome)
        clock.advance(timedelta(minutes=5))
    assert outcomes == ["new_ticket"] + ["auto"] * 19  # none held by the circuit breaker
    (t,) = tickets_of(app)
    assert message_count(app, t) == 20
    assert (t.category, t.priority, t.status) == ("incident", "high", Status.NEW)
    assert t.alert_key == "nagios:service alert web01/http"
    assert outbox(app, "ack") == []
    (notice,) = outbox(app, "dispatcher_new")
    assert "Alert from nagios (PROBLEM): category incident, priority high" in " ".join(notice.body.split())
    assert len(events(app, t, "alert_repeated")) == 19
    app.close()


def test_copies_of_a_new_alert_ingested_at_once_open_one_ticket(tmp_path, db_url, clock) -> None:
    # Two monitoring servers, or one notifying several desk addresses: the same alert at once.
    app = desk(tmp_path, db_url, clock)
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = sorted(pool.map(lambda _: ingest(app, alert(PROBLEM), "smtp").outcome, range(8)))
    assert outcomes == ["auto"] * 7 + ["new_ticket"]
    (t,) = tickets_of(app)
    assert message_count(app, t) == 8
    app.close()


def test_an_alert_without_any_automatic_header_is_not_acknowledged_either(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock)
    assert ingest(app, alert(PROBLEM), "smtp").outcome == "new_ticket"
    assert ingest(app, alert(PROBLEM), "smtp").outcome == "auto"
    assert outbox(app, "ack") == [] and len(tickets_of(app)) == 1
    app.close()


def test_an_alert_from_a_null_sender_still_opens_its_ticket(tmp_path, db_url, clock) -> None:
    # MAIL FROM:<> makes any other mail a reaction, stored on no ticket.
    app = desk(tmp_path, db_url, clock)
    result = ingest(app, alert(PROBLEM), "smtp", envelope_sender="")
    assert result.outcome == "new_ticket"
    assert outbox(app, "ack") == []
    app.close()


def test_the_recovery_adds_a_note_and_leaves_the_ticket_open_unless_configured(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock)
    ingest(app, alert(PROBLEM), "smtp")
    clock.advance(timedelta(minutes=30))
    assert ingest(app, alert(RECOVERY), "smtp").outcome == "auto"
    (t,) = tickets_of(app)
    assert message_count(app, t) == 2 and t.status == Status.NEW
    (note,) = events(app, t, "alert_recovered")
    assert (note.actor, note.evidence) == ("mailgate", "alert nagios")
    assert note.new.startswith("RECOVERY") and note.message_id is not None
    assert len(outbox(app)) == 1  # the dispatcher's notice of the problem, nothing since
    app.close()


def test_the_recovery_resolves_the_ticket_where_configured_and_the_next_problem_opens_a_new_one(
    tmp_path, db_url, clock
) -> None:
    app = desk(tmp_path, db_url, clock, {**NAGIOS, "resolve_on_recovery": True})
    ingest(app, alert(PROBLEM), "smtp")
    clock.advance(timedelta(minutes=30))
    ingest(app, alert(RECOVERY), "smtp")
    (first,) = tickets_of(app)
    assert first.status == Status.RESOLVED
    (resolved,) = events(app, first, "status")
    assert (resolved.new, resolved.actor, resolved.evidence) == ("resolved", "mailgate", "alert nagios")
    clock.advance(timedelta(hours=2))
    assert ingest(app, alert(PROBLEM), "smtp").outcome == "new_ticket"
    first, second = tickets_of(app)
    assert first.status == Status.RESOLVED and message_count(app, first) == 2
    assert second.alert_key == first.alert_key and message_count(app, second) == 1
    app.close()


@pytest.mark.parametrize(
    ("problem", "recovery", "priority"),
    [
        ("** PROBLEM Host Alert: web01 is DOWN **", "** RECOVERY Host Alert: web01 is UP **", "urgent"),
        ("[PROBLEM] HTTP on web01 is WARNING!", "[RECOVERY] HTTP on web01 is OK!", "normal"),
        ("Problem: High CPU utilization on db1", "Resolved in 5m 0s: High CPU utilization on db1", "normal"),
        ("[FIRING:2] InstanceDown (node web01 critical)", "[RESOLVED] InstanceDown (node web01 critical)", "high"),
        ("Monitor is DOWN: www.example.com", "Monitor is UP: www.example.com", "urgent"),
    ],
    ids=["nagios-host", "icinga2", "zabbix", "alertmanager", "uptime"],
)
def test_common_formats_pair_a_problem_with_its_recovery(tmp_path, db_url, clock, problem, recovery, priority) -> None:
    app = desk(
        tmp_path, db_url, clock, {"name": "mon", "senders": ["monitor.example.com"], "resolve_on_recovery": True}
    )
    sender = "alerts@eu.monitor.example.com"  # a subdomain of the one configured
    assert ingest(app, alert(problem, sender=sender), "smtp").outcome == "new_ticket"
    assert ingest(app, alert(problem, sender=sender), "smtp").outcome == "auto"
    assert ingest(app, alert(recovery, sender=sender), "smtp").outcome == "auto"
    (t,) = tickets_of(app)
    assert (t.priority, t.status, message_count(app, t)) == (priority, Status.RESOLVED, 3)
    app.close()


def test_a_key_pattern_of_ones_own_pairs_what_the_subject_alone_would_not(tmp_path, db_url, clock) -> None:
    # Uptime Kuma: the monitor's name first, then the state and a message that differs.
    source = {"name": "kuma", "senders": ["kuma@monitor.example.com"], "key": r"^\[([^\]]+)\]"}
    app = desk(tmp_path, db_url, clock, {**source, "resolve_on_recovery": True})
    sender = "kuma@monitor.example.com"
    ingest(app, alert("[Intranet] [🔴 Down] timeout of 48000ms exceeded", sender=sender), "smtp")
    ingest(app, alert("[Intranet] [✅ Up] 200 - OK", sender=sender), "smtp")
    (t,) = tickets_of(app)
    assert (t.alert_key, t.priority, t.status) == ("kuma:intranet", "urgent", Status.RESOLVED)
    app.close()


def test_a_graver_repeat_raises_the_priority_and_its_deadline(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock)
    ingest(app, alert("** PROBLEM Service Alert: web01/Disk is WARNING **"), "smtp")
    (before,) = tickets_of(app)
    ingest(app, alert("** PROBLEM Service Alert: web01/Disk is CRITICAL **"), "smtp")
    ingest(app, alert("** PROBLEM Service Alert: web01/Disk is WARNING **"), "smtp")  # never lowered
    (after,) = tickets_of(app)
    assert (before.priority, after.priority) == ("normal", "high")
    assert after.first_response_due < before.first_response_due
    app.close()


def test_mail_of_other_senders_and_subjects_is_no_alert(tmp_path, db_url, clock) -> None:
    source = {"name": "zabbix", "senders": ["zabbix@monitor.example.com"], "subject": r"^(Problem|Resolved)"}
    app = desk(tmp_path, db_url, clock, source)
    ingest(app, alert("Problem: disk full", sender="zabbix@monitor.example.com"), "smtp")
    ingest(app, alert("Problem: disk full", sender="dana@example.com"), "smtp")  # a person, same subject
    ingest(app, alert("Weekly report", sender="zabbix@monitor.example.com"), "smtp")
    keys = [t.alert_key for t in tickets_of(app)]
    assert keys == ["zabbix:disk full", None, None]
    alert_ticket = tickets_of(app)[0]
    assert [o.ticket_id for o in outbox(app, "ack")] == [t.id for t in tickets_of(app)[1:]]  # not the alert's
    assert alert_ticket.category == "incident"
    app.close()


def test_a_person_forwarding_or_answering_an_alert_writes_to_the_desk(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock, {"name": "mon", "subject": r"\*\* (PROBLEM|RECOVERY) "})
    ingest(app, alert(PROBLEM), "smtp")
    forwarded = ingest(app, alert(f"Fwd: {PROBLEM}", sender="dana@example.com", body="Is this why?\n"), "smtp")
    assert forwarded.outcome == "new_ticket"
    assert [t.alert_key for t in tickets_of(app)] == ["mon:service alert web01/http", None]
    assert len(outbox(app, "ack")) == 1  # dana's question is answered like any request
    app.close()


def test_a_recovery_of_no_open_alert_opens_nothing(tmp_path, db_url, clock) -> None:
    app = desk(tmp_path, db_url, clock)
    assert ingest(app, alert(RECOVERY), "smtp").outcome == "auto"
    assert tickets_of(app) == [] and outbox(app) == []
    app.close()


def test_routing_rules_fill_what_the_alert_left(tmp_path, db_url, clock) -> None:
    rules = [{"name": "ops", "senders": ["monitor.example.com"], "team": "network", "category": "hardware"}]
    app = desk(tmp_path, db_url, clock, routes=rules)
    ingest(app, alert(PROBLEM), "smtp")
    (t,) = tickets_of(app)
    assert (t.category, t.team, t.priority) == ("incident", "network", "high")  # the alert's category stays
    app.close()


def test_a_burst_of_distinct_alerts_is_bounded_by_the_sources_own_limit(tmp_path, db_url, clock) -> None:
    source = {**NAGIOS, "new_tickets": {"count": 5, "window_minutes": 60}}
    # An outage: more distinct alerts than breaker.per_sender allows anyone, fewer than the source's limit.
    app = desk(tmp_path, db_url, clock, source, breaker={"per_sender": {"count": 3, "window_minutes": 60}})
    outcomes = [ingest(app, alert(f"** PROBLEM Host Alert: host{n} is DOWN **"), "smtp").outcome for n in range(8)]
    assert outcomes == ["new_ticket"] * 5 + ["held"] * 3
    assert [o.kind for o in outbox(app)] == ["dispatcher_new"] * 5 + ["breaker_warning"]
    assert "alert:nagios" in outbox(app, "breaker_warning")[0].body
    # A repeat of an alert that has its ticket is still a reply to it.
    assert ingest(app, alert("** PROBLEM Host Alert: host0 is DOWN **"), "smtp").outcome == "auto"
    with app.sessions() as s, s.begin():  # what `mailgate limits lift alert:nagios` does
        assert [t.source for t in lift(s, "alert:nagios", clock.now(), "admin@example.com")] == ["alert:nagios"]
    assert ingest(app, alert("** PROBLEM Host Alert: host9 is DOWN **"), "smtp").outcome == "new_ticket"
    app.close()


def held_ticket_of(app: App, subject: str) -> Ticket:
    """The ticket the breaker stored the held alert mail `subject` on."""
    with app.sessions() as s:
        held = s.scalars(select(Message).where(Message.subject == subject, Message.kind == "held"))
        (ticket_id,) = {m.ticket_id for m in held}
        return s.get(Ticket, ticket_id)


def test_a_held_alert_keeps_its_key_and_its_recovery_finds_its_ticket(tmp_path, db_url, clock) -> None:
    source = {**NAGIOS, "resolve_on_recovery": True, "new_tickets": {"count": 3, "window_minutes": 60}}
    app = desk(tmp_path, db_url, clock, source)
    down = [f"** PROBLEM Host Alert: host{n} is DOWN **" for n in range(5)]
    outcomes = [ingest(app, alert(subject), "smtp").outcome for subject in down]
    assert outcomes == ["new_ticket"] * 3 + ["held"] * 2
    holding = held_ticket_of(app, down[4])
    # Not on another alert's ticket, which that alert's recovery would resolve with host4 still down.
    assert holding.alert_key is None and holding.id not in {t.id for t in tickets_of(app)[:3]}
    clock.advance(timedelta(minutes=5))
    # Still down: a repeat of a held alert joins it where it is held, and holds nothing anew.
    assert ingest(app, alert(down[4]), "smtp").outcome == "auto"
    assert message_count(app, holding) == 3
    assert (tickets_of(app)[3].priority, tickets_of(app)[3].first_response_due) == ("normal", None)
    clock.advance(timedelta(minutes=20))
    recovered = ingest(app, alert("** RECOVERY Host Alert: host4 is UP **"), "smtp")
    assert (recovered.outcome, recovered.ticket_number) == ("auto", holding.number), recovered.trace
    (note,) = events(app, holding, "alert_recovered")
    assert "host4 is UP" in note.new and note.message_id is not None
    # It holds host3's problem still: a recovery of one of its alerts does not resolve it.
    assert tickets_of(app)[3].status != Status.RESOLVED
    # The alerts with tickets of their own are untouched by it, and their recoveries resolve them.
    assert [t.status for t in tickets_of(app)[:3]] == [Status.NEW] * 3
    ingest(app, alert("** RECOVERY Host Alert: host2 is UP **"), "smtp")
    assert tickets_of(app)[2].status == Status.RESOLVED
    app.close()


def _config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mailgate.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('name = "x"', ["alerts.0", "matches no mail", "senders, subject or both"]),
        ('name = "x"\nsubject = "[PROBLEM"', ["alerts.0.subject", "regular expression"]),
        ('name = "x"\nsubject = "a"\nstates = { CRITICAL = "asap" }', ["alerts.0.states.CRITICAL", "'asap'", "'high'"]),
        ('name = "x"\nsubject = "a"\nrecovery = ["ALL CLEAR"]', ["alerts.0.recovery", "single words"]),
        ('name = "x"\nsubject = "a"\nrecovery = ["OK", "CRITICAL"]', ["alerts.0", "CRITICAL", "not both"]),
        ('name = "x"\nsenders = ["nagios at example"]', ["alerts.0.senders", "domains"]),
    ],
)
def test_a_bad_alert_source_names_the_key_the_value_and_what_was_expected(tmp_path, source, expected) -> None:
    message = _config_error(tmp_path, f"[[alerts]]\n{source}\n")
    for part in expected:
        assert part in message, message


def test_a_source_that_requires_proof_takes_only_mail_the_trusted_mta_proved(tmp_path, db_url, clock) -> None:
    """Anyone can write the monitoring system's From. With require_proof, only mail the trusted
    MTA proved (DMARC pass, or DKIM of the From's domain) is the source's alert: a forged
    RECOVERY with no verdict at all resolves nothing."""
    source = {**NAGIOS, "resolve_on_recovery": True, "require_proof": True}
    app = desk(tmp_path, db_url, clock, source, acknowledgements={"trusted_authserv_ids": ["mx.example.com"]})
    proven = {**GENERATED, "Authentication-Results": "mx.example.com; dmarc=pass header.from=monitor.example.com"}
    ingest(app, alert(PROBLEM, headers=proven), "smtp")
    forged = ingest(app, alert(RECOVERY, headers=GENERATED), "smtp")
    incident = tickets_of(app)[0]
    assert incident.status == Status.NEW, "the forged recovery resolved the incident"
    assert events(app, incident, "alert_recovered") == []
    assert "not proven" in " ".join(t["decision"] for t in forged.trace if t["step"] == "alerts")
    ingest(app, alert(RECOVERY, headers=proven), "smtp")
    assert tickets_of(app)[0].status == Status.RESOLVED
    app.close()
