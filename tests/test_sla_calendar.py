"""Business-time arithmetic: the promises the acknowledgement makes ("we will answer by Monday
12:30") are right over weekends, holidays, DST changes and midnight in a 24x7 calendar."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mailgate.sla.calendar import Calendar, CalendarError, holiday_set, parse_spans

BERLIN = ZoneInfo("Europe/Berlin")
OFFICE = {day: "09:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def office(holidays: frozenset[date] = frozenset()) -> Calendar:
    return Calendar.from_hours(BERLIN, OFFICE, holidays)


def test_four_business_hours_from_friday_1630_is_monday_1230() -> None:
    due = office().add(berlin(2026, 11, 27, 16, 30), timedelta(hours=4))
    assert due == berlin(2026, 11, 30, 12, 30)


def test_a_holiday_on_that_monday_moves_it_to_tuesday_1230() -> None:
    due = office(frozenset({date(2026, 11, 30)})).add(berlin(2026, 11, 27, 16, 30), timedelta(hours=4))
    assert due == berlin(2026, 12, 1, 12, 30)


def test_mail_at_night_or_on_a_weekend_starts_the_clock_at_the_next_opening() -> None:
    assert office().add(berlin(2026, 11, 28, 3, 44), timedelta(hours=1)) == berlin(2026, 11, 30, 10, 0)
    assert office().add(berlin(2026, 11, 25, 3, 44), timedelta(hours=1)) == berlin(2026, 11, 25, 10, 0)


def test_business_days_are_counted_as_working_hours() -> None:
    # 3 days of 8 hours: Monday 09:00 + 24 business hours = Wednesday 17:00
    assert office().add(berlin(2026, 11, 30, 9, 0), timedelta(hours=24)) == berlin(2026, 12, 2, 17, 0)


def test_across_the_autumn_dst_change_business_hours_stay_wall_clock_hours() -> None:
    # Clocks go back on Sunday 25 Oct 2026; Friday 16:00 + 2 business hours is Monday 10:00 local,
    # which is 09:00 UTC (it was 14:00 UTC on Friday).
    due = office().add(berlin(2026, 10, 23, 16, 0), timedelta(hours=2))
    assert due == berlin(2026, 10, 26, 10, 0)
    assert due.astimezone(UTC) == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)


def test_24x7_is_real_elapsed_time_across_dst_and_midnight() -> None:
    always = Calendar.always_open(BERLIN)
    start = berlin(2026, 3, 28, 12, 0)  # the night of 29 March has 23 hours
    due = always.add(start, timedelta(hours=24))
    assert due - start.astimezone(UTC) == timedelta(hours=24)
    assert due.astimezone(BERLIN).hour == 13  # one wall-clock hour later than the start
    # No minute is missing at midnight (Zammad #3180):
    midnight = berlin(2026, 12, 1, 23, 59, 30)
    assert always.add(midnight, timedelta(minutes=1)) == berlin(2026, 12, 2, 0, 0, 30)
    assert always.is_open(berlin(2026, 12, 2, 0, 0))


def test_between_is_the_business_time_that_passed() -> None:
    cal = office()
    assert cal.between(berlin(2026, 11, 27, 16, 30), berlin(2026, 11, 30, 12, 30)) == timedelta(hours=4)
    assert cal.between(berlin(2026, 11, 28, 10, 0), berlin(2026, 11, 29, 18, 0)) == timedelta(0)
    assert cal.between(berlin(2026, 11, 30, 12, 0), berlin(2026, 11, 30, 11, 0)) == timedelta(0)


def test_split_opening_hours_and_a_lunch_break() -> None:
    cal = Calendar.from_hours(BERLIN, {"mon": "09:00-12:00, 13:00-17:00"})
    assert cal.add(berlin(2026, 11, 30, 11, 0), timedelta(hours=2)) == berlin(2026, 11, 30, 14, 0)
    assert not cal.is_open(berlin(2026, 11, 30, 12, 30))
    assert cal.next_open(berlin(2026, 11, 30, 12, 30)) == berlin(2026, 11, 30, 13, 0)


def test_public_holidays_come_from_the_holidays_library() -> None:
    days = holiday_set([date(2026, 12, 24)], country="DE")
    assert date(2026, 12, 24) in days and date(2026, 12, 25) in days and date(2026, 12, 23) not in days
    # Thursday 24 Dec 16:00: 24th (configured), 25th (public) closed -> Monday 28th 10:00
    cal = office(days)  # type: ignore[arg-type]
    assert cal.add(berlin(2026, 12, 23, 16, 0), timedelta(hours=2)) == berlin(2026, 12, 28, 10, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("9-17", "like"), ("17:00-09:00", "start before the end"), ("09:00-13:00,12:00-17:00", "overlap")],
)
def test_unreadable_opening_hours_say_what_was_expected(value: str, expected: str) -> None:
    with pytest.raises(CalendarError, match=expected):
        parse_spans(value)


def test_a_calendar_without_any_opening_hours_is_refused() -> None:
    with pytest.raises(CalendarError, match="no opening hours"):
        Calendar.from_hours(BERLIN, {"mon": "closed"})
    with pytest.raises(CalendarError, match="expected a day"):
        Calendar.from_hours(BERLIN, {"monday": "09:00-17:00"})
