"""[sla]: the calendars and the targets a ticket is promised, as the config file gives them.

    [sla]
    timezone = "Europe/Berlin"            # default: tickets.timezone
    business_hours = { mon = "09:00-17:00", … }   # or "24x7"
    holidays = ["2026-12-24"]
    holiday_country = "DE"                # public holidays from the holidays library
    [sla.targets.normal]
    first_response = "4h"                 # business time; "d" is one working day of the calendar
    resolution = "3d"
    [sla.teams.network]                   # a team's own calendar and targets
    business_hours = "24x7"
    [sla.categories.incident.targets.urgent]
    first_response = "30m"

Validated here, so that a bad value names its key; the calendars are built in sla/policy.py.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailgate.sla.calendar import WEEKDAYS, CalendarError, parse_spans

Priority = Literal["low", "normal", "high", "urgent"]
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(m|min|minutes?|h|hours?|d|days?)", re.IGNORECASE)
OFFICE_HOURS = {day: "09:00-17:00" for day in WEEKDAYS[:5]}


class Duration(BaseModel):
    """Business time: minutes of opening hours, plus whole working days of the calendar."""

    model_config = ConfigDict(frozen=True)
    minutes: float = 0
    days: float = 0

    def resolve(self, day_length: timedelta) -> timedelta:
        return timedelta(minutes=self.minutes) + self.days * day_length

    def __str__(self) -> str:
        parts = [f"{self.days:g}d"] if self.days else []
        hours, minutes = divmod(self.minutes, 60)
        parts += [f"{hours:g}h"] if hours else []
        parts += [f"{minutes:g}m"] if minutes else []
        return " ".join(parts) or "0m"


def parse_duration(value: Any) -> Duration:
    """ "4h", "30m", "1d 4h", "3 days"; a number alone is hours (tickets.first_response_hours)."""
    if isinstance(value, Duration):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f'{value!r}: expected a positive duration like "4h", "30m" or "3d"')
        return Duration(minutes=float(value) * 60)
    text = str(value).strip()
    found = list(_PART.finditer(text))
    if not found or _PART.sub("", text).strip(" ,") or text[0] == "-":
        raise ValueError(f'{value!r}: expected a duration like "4h", "30m", "3d" or "1d 4h"')
    minutes = days = 0.0
    for match in found:
        amount, unit = float(match.group(1)), match.group(2).lower()
        if unit.startswith("d"):
            days += amount
        elif unit.startswith("h"):
            minutes += amount * 60
        else:
            minutes += amount
    if minutes == 0 and days == 0:
        raise ValueError(f"{value!r}: expected a positive duration")
    return Duration(minutes=minutes, days=days)


class Targets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    first_response: Duration | None = None
    resolution: Duration | None = None

    @field_validator("first_response", "resolution", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Duration | None:
        return None if value in (None, "") else parse_duration(value)


def _check_hours(value: Any) -> Any:
    if value == "24x7" or value is None:
        return value
    if not isinstance(value, dict):
        raise ValueError(f'{value!r}: expected "24x7" or a table like {{ mon = "09:00-17:00" }}')
    unknown = sorted(set(value) - set(WEEKDAYS))
    if unknown:
        raise ValueError(f"{unknown[0]!r}: expected a day among {', '.join(WEEKDAYS)}")
    try:
        if not any(parse_spans(str(spans)) for spans in value.values()):
            raise ValueError('no opening hours on any day: expected at least one day like mon = "09:00-17:00"')
    except CalendarError as exc:
        raise ValueError(str(exc)) from None
    return value


class _CalendarFields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # None: the desk's calendar ([sla] business_hours), for a team.
    business_hours: dict[str, str] | Literal["24x7"] | None = None
    holidays: list[date] = Field(default_factory=list)
    holiday_country: str = ""
    holiday_subdivision: str = ""

    @field_validator("business_hours", mode="before")
    @classmethod
    def _hours(cls, value: Any) -> Any:
        return _check_hours(value)

    @model_validator(mode="after")
    def _known_country(self) -> _CalendarFields:
        if not self.holiday_country:
            if self.holiday_subdivision:
                raise ValueError("holiday_subdivision needs a holiday_country")
            return self
        import holidays

        supported = holidays.list_supported_countries()
        if self.holiday_country not in supported:
            raise ValueError(
                f"holiday_country = {self.holiday_country!r}: expected an ISO 3166 country code the holidays "
                "library knows, e.g. 'DE', 'AT', 'CH', 'US', 'GB'"
            )
        regions = supported[self.holiday_country]
        if self.holiday_subdivision and self.holiday_subdivision not in regions:
            raise ValueError(
                f"holiday_subdivision = {self.holiday_subdivision!r}: expected one of {', '.join(regions)}"
            )
        return self


class TeamSla(_CalendarFields):
    targets: dict[Priority, Targets] = Field(default_factory=dict)
    # The team's lead: the first to hear of a breach of one of its tickets.
    lead: str = ""

    @field_validator("lead")
    @classmethod
    def _lead_address(cls, value: str) -> str:
        return _check_address(value)


# What the scans notify people of (sla/scans.py), for at_any_hour.
KINDS = ("warning", "escalation", "unassigned", "idle", "pending_reminder", "auto_resolve", "auto_close")


class CategorySla(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    targets: dict[Priority, Targets] = Field(default_factory=dict)


class Sla(_CalendarFields):
    timezone: str = ""  # empty: tickets.timezone
    business_hours: dict[str, str] | Literal["24x7"] | None = Field(default_factory=lambda: dict(OFFICE_HOURS))
    # Where escalations go when a ticket has no team lead or assignee's manager to go to.
    escalation_address: str = ""
    # The assignee is warned when this share of a target has passed (0.75: at 3 of 4 hours).
    warn_at: float = Field(default=0.75, gt=0, lt=1)
    # A breach escalates to the team lead or the assignee's manager (level 1), and this much
    # business time later, still unmet, to their manager or escalation_address (level 2).
    escalate_again_after: Duration = Duration(minutes=240)
    # Wall-clock times; 0 turns the scan off. An unassigned ticket this old goes back to the
    # dispatcher; an assignee hears of their open ticket when nothing happened on it for this long.
    unassigned_after_hours: float = Field(default=2, ge=0)
    idle_after_hours: float = Field(default=48, ge=0)
    # A ticket pending on its requester: a reminder every pending_reminder_days, and after
    # pending_reminders of them (and as long again) it is resolved, with a mail saying so.
    pending_reminder_days: float = Field(default=3, ge=0)
    pending_reminders: int = Field(default=2, ge=0)
    # A resolved ticket without a reply closes after this; the closing mail asks for a rating.
    close_resolved_after_days: float = Field(default=7, ge=0)
    # Mail to people waits for the opening hours of the ticket's calendar; these kinds go at any
    # hour (see KINDS). An urgent ticket's escalation goes at once unless this is false.
    at_any_hour: list[str] = Field(default_factory=list)
    urgent_escalations_at_once: bool = True
    # The daemon runs the scans this often; each looks at no more than scan_batch tickets a run
    # (the rest are found by the next run), so a backlog costs time, never a stall.
    scan_interval_seconds: int = Field(default=300, ge=10)
    scan_batch: int = Field(default=500, ge=1, le=100_000)

    @field_validator("escalate_again_after", mode="before")
    @classmethod
    def _again(cls, value: Any) -> Duration:
        return parse_duration(value)

    @field_validator("at_any_hour")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        unknown = [k for k in value if k not in KINDS]
        if unknown:
            raise ValueError(f"{unknown[0]!r}: expected some of {', '.join(KINDS)}")
        return value

    # Per priority. A priority without targets here falls back to tickets.first_response_hours
    # (business hours) for its first response, and has no resolution target.
    targets: dict[Priority, Targets] = Field(default_factory=dict)
    teams: dict[str, TeamSla] = Field(default_factory=dict)
    categories: dict[str, CategorySla] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if not value:
            return value
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("an IANA time zone name such as 'Europe/Berlin'") from None
        return value

    @field_validator("escalation_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _check_address(value)


def _check_address(value: str) -> str:
    if value and not re.fullmatch(r"[^@\s<>()\[\],;:\"]+@[A-Za-z0-9.-]+", value):
        raise ValueError("an address like it-lead@example.com (no display name)")
    return value.lower()
