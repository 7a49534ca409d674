"""Business time: when the desk works, and what "4 business hours after Friday 16:30" is.

Pure arithmetic, no I/O. Opening hours are local wall-clock times in the calendar's time zone;
every instant is converted to UTC before it is added or subtracted, because Python subtracts
two aware datetimes of one zone as wall-clock times and would be an hour off across a DST
change. "24x7" is a calendar too: every day from 00:00 to 24:00 (the next midnight), with no
minute missing at midnight and days of 23 or 25 hours where the clocks change.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
# A calendar with no opening hours in this many days is a mistake, not a slow week: the search
# for the next opening stops there instead of running forever.
MAX_DAYS = 3 * 366

# Opening hours of a day as minutes after local midnight: [(540, 1020)] is 09:00-17:00.
Spans = tuple[tuple[int, int], ...]


class CalendarError(ValueError):
    """Opening hours that cannot be read; the message says what was expected."""


def parse_spans(value: str) -> Spans:
    """ "09:00-12:00, 13:00-17:00" -> ((540, 720), (780, 1020)); "" or "closed" -> (). 24:00 ends
    a day at the next midnight."""
    if value.strip().lower() in ("", "closed"):
        return ()
    spans: list[tuple[int, int]] = []
    for part in value.split(","):
        match = _SPAN.match(part)
        if not match:
            raise CalendarError(f'{part.strip()!r}: expected opening hours like "09:00-17:00"')
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if m1 > 59 or m2 > 59 or start >= 24 * 60 or end > 24 * 60 or start >= end:
            raise CalendarError(f"{part.strip()!r}: expected a start before the end, within 00:00-24:00")
        spans.append((start, end))
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        if start < end:
            raise CalendarError(f"{value!r}: the opening hours overlap")
    return tuple(spans)


@dataclass(frozen=True)
class Calendar:
    timezone: ZoneInfo
    week: tuple[Spans, ...]  # seven entries, Monday first
    holidays: Container[date] = frozenset()
    name: str = ""

    @classmethod
    def always_open(cls, timezone: ZoneInfo, name: str = "24x7") -> Calendar:
        return cls(timezone, (((0, 24 * 60),),) * 7, frozenset(), name)

    @classmethod
    def from_hours(
        cls, timezone: ZoneInfo, hours: Mapping[str, str], holidays: Container[date] = frozenset(), name: str = ""
    ) -> Calendar:
        """From {"mon": "09:00-17:00", …}; a day not named is closed."""
        unknown = sorted(set(hours) - set(WEEKDAYS))
        if unknown:
            raise CalendarError(f"{unknown[0]!r}: expected a day among {', '.join(WEEKDAYS)}")
        week = tuple(parse_spans(hours.get(day, "")) for day in WEEKDAYS)
        if not any(week):
            raise CalendarError('no opening hours on any day: expected at least one day like mon = "09:00-17:00"')
        return cls(timezone, week, holidays, name)

    # -- the working periods ------------------------------------------------------------------

    def _periods(self, day: date) -> list[tuple[datetime, datetime]]:
        """The day's opening hours as UTC instants (none on a holiday)."""
        if day in self.holidays:
            return []
        periods = []
        for start, end in self.week[day.weekday()]:
            periods.append((self._instant(day, start), self._instant(day, end)))
        return periods

    def _instant(self, day: date, minutes: int) -> datetime:
        if minutes == 24 * 60:
            day, minutes = day + timedelta(days=1), 0
        local = datetime.combine(day, time(minutes // 60, minutes % 60), self.timezone)
        # A wall-clock time the spring change skips (02:30) does not exist: take the instant the
        # clocks jump to. fold=0 gives that for zoneinfo; UTC conversion makes it exact.
        return local.astimezone(UTC)

    def _periods_from(self, at: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working periods from `at` on, the first clipped to start at `at`."""
        at = _utc(at)
        day = at.astimezone(self.timezone).date() - timedelta(days=1)  # a period may start the day before
        for _ in range(MAX_DAYS):
            for start, end in self._periods(day):
                if end > at:
                    yield max(start, at), end
            day += timedelta(days=1)
        raise CalendarError(f"calendar {self.name!r} has no opening hours within {MAX_DAYS} days")

    # -- arithmetic ---------------------------------------------------------------------------

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant `duration` of business time after `start` (UTC). A start outside opening
        hours counts from the next opening: a mail at 03:44 on a Saturday starts on Monday."""
        left = duration
        if left <= timedelta(0):
            return self.next_open(start)
        for begin, end in self._periods_from(start):
            if end - begin >= left:
                return begin + left
            left -= end - begin
        raise AssertionError("unreachable: _periods_from raises at its bound")

    def between(self, start: datetime, end: datetime) -> timedelta:
        """Business time from `start` to `end` (zero when end is not after start)."""
        start, end = _utc(start), _utc(end)
        total = timedelta(0)
        if end <= start:
            return total
        for begin, finish in self._periods_from(start):
            if begin >= end:
                break
            total += min(finish, end) - begin
        return total

    def is_open(self, at: datetime) -> bool:
        at = _utc(at)
        begin, _ = next(self._periods_from(at))
        return begin <= at

    def next_open(self, at: datetime) -> datetime:
        """`at` if the desk works then, else when it opens next (UTC)."""
        return next(self._periods_from(at))[0]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a calendar; pass an aware time")
    return value.astimezone(UTC)


def holiday_set(dates: list[date], country: str = "", subdivision: str = "") -> Container[date]:
    """The configured dates, plus a country's public holidays from the `holidays` library (kept
    up to date by its maintainers for 150+ countries and their regions, years computed as asked)."""
    fixed = frozenset(dates)
    if not country:
        return fixed
    import holidays

    public = holidays.country_holidays(country, subdiv=subdivision or None)
    return _Union(fixed, public.__contains__)


@dataclass(frozen=True)
class _Union:
    fixed: frozenset[date]
    public: Callable[[date], bool]

    def __contains__(self, day: object) -> bool:
        return day in self.fixed or (isinstance(day, date) and self.public(day))
