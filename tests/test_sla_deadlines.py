"""The promise a new ticket gets: its deadlines in business time, stored on the ticket and said
in the acknowledgement ("we will answer by Monday 12:30")."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.config import ConfigError, load_settings
from mailgate.ingest.pipeline import ingest
from tests.conftest import make_settings
from tests.mails import mail
from tests.test_ingest import outbox, ticket

BERLIN = ZoneInfo("Europe/Berlin")
FRIDAY_1630 = datetime(2026, 11, 27, 16, 30, tzinfo=BERLIN)
OFFICE = {day: "09:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}


def desk(tmp_path: Path, db_url: str, when: datetime, **sla: object) -> App:
    settings = make_settings(
        tmp_path,
        db_url,
        tickets={"timezone": "Europe/Berlin"},
        sla={"business_hours": OFFICE, "targets": {"normal": {"first_response": "4h", "resolution": "3d"}}, **sla},
    )
    return App.build(settings, clock=FixedClock(when.astimezone(UTC)))


def local(value: datetime) -> datetime:
    return value.astimezone(BERLIN)


def test_friday_1630_with_four_business_hours_is_due_monday_1230_and_the_ack_says_so(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, FRIDAY_1630)
    number = ingest(app, mail(), "smtp").ticket_number
    t = ticket(app, number)
    assert local(t.first_response_due) == datetime(2026, 11, 30, 12, 30, tzinfo=BERLIN)
    # 3 working days of 8 hours: half an hour on Friday, Monday, Tuesday, 7.5 hours on Wednesday
    assert local(t.resolution_due) == datetime(2026, 12, 2, 16, 30, tzinfo=BERLIN)
    ack = outbox(app, "ack")[0].body
    assert "we will answer by Monday 30 November 12:30 (Europe/Berlin)" in " ".join(ack.split())
    app.close()


def test_the_promise_reads_in_the_zone_of_the_business_hours_not_tickets_timezone(tmp_path, db_url) -> None:
    # The hours are Berlin's; a desk that left tickets.timezone at UTC still promises Berlin's 12:30.
    settings = make_settings(
        tmp_path,
        db_url,
        tickets={"timezone": "UTC"},
        sla={"timezone": "Europe/Berlin", "business_hours": OFFICE, "targets": {"normal": {"first_response": "4h"}}},
    )
    app = App.build(settings, clock=FixedClock(FRIDAY_1630.astimezone(UTC)))
    t = ticket(app, ingest(app, mail(), "smtp").ticket_number)
    assert local(t.first_response_due) == datetime(2026, 11, 30, 12, 30, tzinfo=BERLIN)
    ack = " ".join(outbox(app, "ack")[0].body.split())
    assert "we will answer by Monday 30 November 12:30 (Europe/Berlin)" in ack
    assert "(UTC)" not in ack
    app.close()


def test_a_holiday_on_that_monday_moves_it_to_tuesday_1230(tmp_path, db_url) -> None:
    app = desk(tmp_path, db_url, FRIDAY_1630, holidays=["2026-11-30"])
    t = ticket(app, ingest(app, mail(), "smtp").ticket_number)
    assert local(t.first_response_due) == datetime(2026, 12, 1, 12, 30, tzinfo=BERLIN)
    app.close()


def test_a_team_calendar_and_a_category_target_win_over_the_desks(tmp_path, db_url) -> None:
    from mailgate.sla import policy

    settings = make_settings(
        tmp_path,
        db_url,
        tickets={"timezone": "Europe/Berlin"},
        sla={
            "business_hours": OFFICE,
            "targets": {"urgent": {"first_response": "4h"}},
            "teams": {"ops": {"business_hours": "24x7"}},
            "categories": {"incident": {"targets": {"urgent": {"first_response": "30m"}}}},
        },
    )
    start = FRIDAY_1630.astimezone(UTC)
    office = policy.deadlines(settings, priority="urgent", category=None, team=None, start=start)
    ops = policy.deadlines(settings, priority="urgent", category=None, team="ops", start=start)
    incident = policy.deadlines(settings, priority="urgent", category="incident", team="ops", start=start)
    assert local(office.first_response) == datetime(2026, 11, 30, 12, 30, tzinfo=BERLIN)
    assert local(ops.first_response) == datetime(2026, 11, 27, 20, 30, tzinfo=BERLIN)  # 24x7: tonight
    assert local(incident.first_response) == datetime(2026, 11, 27, 17, 0, tzinfo=BERLIN)


def test_without_sla_targets_the_first_response_hours_count_in_office_hours(tmp_path, db_url) -> None:
    # The default calendar is Monday to Friday 09:00-17:00: a mail at 03:44 on a Saturday is not
    # promised an answer for Saturday morning.
    saturday = datetime(2026, 11, 28, 3, 44, tzinfo=BERLIN)
    settings = make_settings(tmp_path, db_url, tickets={"timezone": "Europe/Berlin"})
    app = App.build(settings, clock=FixedClock(saturday.astimezone(UTC)))
    t = ticket(app, ingest(app, mail(), "smtp").ticket_number)
    assert local(t.first_response_due) == datetime(2026, 11, 30, 17, 0, tzinfo=BERLIN)  # 8 h from Monday 09:00
    assert t.resolution_due is None
    app.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[sla.targets.normal]\nfirst_response = "4 hours-ish"\n', ["sla.targets.normal.first_response", "4h"]),
        ('[sla.targets.sometimes]\nfirst_response = "4h"\n', ["sla.targets", "sometimes", "'urgent'"]),
        ('[sla]\nbusiness_hours = { mon = "9-17" }\n', ["sla.business_hours", "09:00-17:00"]),
        ('[sla]\nbusiness_hours = { monday = "09:00-17:00" }\n', ["sla.business_hours", "'monday'", "mon"]),
        ('[sla]\nholiday_country = "XX"\n', ["sla", "holiday_country = 'XX'", "'DE'"]),
        ('[sla]\ntimezone = "Berlin"\n', ["sla.timezone", "IANA"]),
        ('[sla]\nholidays = ["24.12.2026"]\n', ["sla.holidays", "24.12.2026"]),
        ('[sla]\nat_any_hour = ["night"]\n', ["sla.at_any_hour", "'night'", "escalation"]),
        ("[sla]\nwarn_at = 1.5\n", ["sla.warn_at", "1.5"]),
        ('[sla]\nescalate_again_after = "soon"\n', ["sla.escalate_again_after", "4h"]),
        ('[sla.teams.network]\nlead = "Lead <lead@x.org>"\n', ["sla.teams.network.lead", "no display name"]),
    ],
)
def test_a_bad_sla_value_names_the_key_the_value_and_what_was_expected(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    for part in expected:
        assert part in str(info.value), str(info.value)
