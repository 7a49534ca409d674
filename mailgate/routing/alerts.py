"""[[alerts]]: monitoring systems whose mail opens incident tickets, one per alert.

    [[alerts]]
    name = "nagios"
    senders = ["nagios@example.com"]       # addresses or domains (and subdomains), and/or
    subject = "Service Alert|Host Alert"    # a regular expression on the subject
    resolve_on_recovery = true

What a subject says, read the same way for the common formats:

    Nagios/Icinga   ** PROBLEM Service Alert: web01/HTTP is CRITICAL **   ** RECOVERY … is OK **
    Icinga 2        [PROBLEM] HTTP on web01 is CRITICAL!                   [RECOVERY] … is OK!
    Zabbix          Problem: High CPU on web01                             Resolved in 5m 0s: …
    Alertmanager    [FIRING:2] InstanceDown (web01 critical)               [RESOLVED] InstanceDown …
    Uptime checks   Monitor is DOWN: www.example.com                       Monitor is UP: …

The first state word of the subject says what the mail is: a recovery word (OK, UP, RESOLVED,
RECOVERY …) a recovery, anything else a problem, whose priority is that of the gravest state
word in the subject (CRITICAL, DOWN, WARNING …; `priority` when none names one). The alert key
is the source's name and the subject without its state words, "is <state>", counts ("[FIRING:2]"),
durations ("in 5m 0s:") and punctuation, in lower case: a problem and its recovery share it.
Where a format needs more, `key` is a regular expression whose first group (or whole match) is
taken instead of the subject.

The models and the reading are here (no I/O); the step is ingest/alerts.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailgate import subject as subjects
from mailgate.routing import patterns
from mailgate.routing.rules import Priority, check_senders, sender_matches

RANK = {"low": 0, "normal": 1, "high": 2, "urgent": 3}
DEFAULT_STATES: dict[str, Priority] = {
    "DISASTER": "urgent",  # Zabbix's gravest severity
    "EMERGENCY": "urgent",
    "DOWN": "urgent",  # a host or a site is gone
    "CRITICAL": "high",
    "UNREACHABLE": "high",
    "WARNING": "normal",
    "UNKNOWN": "normal",
}
# A problem, without saying how bad: the source's `priority`.
DEFAULT_PROBLEM = ["PROBLEM", "FIRING"]
DEFAULT_RECOVERY = ["RECOVERY", "RECOVERED", "RESOLVED", "OK", "UP"]
# Notification types that say neither (Nagios' acknowledgements, flapping and downtime notices,
# Zabbix's "Updated problem"): left out of the key, so they join the alert's ticket.
DEFAULT_IGNORED = [
    "ACKNOWLEDGEMENT",
    "FLAPPINGSTART",
    "FLAPPINGSTOP",
    "FLAPPINGDISABLED",
    "DOWNTIMESTART",
    "DOWNTIMEEND",
    "DOWNTIMECANCELLED",
    "CUSTOM",
    "UPDATED",
]
KEY_CHARS = 300  # tickets.alert_key


def _words(values: list[str]) -> list[str]:
    for value in values:
        if not re.fullmatch(r"\w[\w-]{0,39}", value):
            raise ValueError(f"single words like CRITICAL ({value!r} is not one)")
    return [v.upper() for v in values]


class NewTickets(BaseModel):
    """At most `count` new alert tickets within `window_minutes` (the circuit breaker counts them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    count: int = Field(default=30, ge=1)
    window_minutes: int = Field(default=60, ge=1)


class AlertSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Which mails: from these senders, and/or with a subject matching this pattern (both, when both given).
    senders: list[str] = Field(default_factory=list)
    subject: str = ""
    # The alert key from a pattern of one's own (its first group, else the whole match).
    key: str = ""
    states: dict[str, Priority] = Field(default_factory=lambda: dict(DEFAULT_STATES))
    problem: list[str] = Field(default_factory=lambda: list(DEFAULT_PROBLEM))
    recovery: list[str] = Field(default_factory=lambda: list(DEFAULT_RECOVERY))
    ignored: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORED))
    priority: Priority = "normal"
    category: str = Field(default="incident", min_length=1, max_length=100)
    resolve_on_recovery: bool = False
    # Only mail the trusted MTA proved (DMARC pass, or DKIM of the From's domain: see
    # acknowledgements.trusted_authserv_ids) is this source's alert. Anyone can write a From:
    # where a recovery resolves incidents, or the source is known by its subject alone, a
    # forger could otherwise raise or end them.
    require_proof: bool = False
    # Distinct alerts of this source that may open tickets (each a dispatcher notice) in a
    # window; past it, the circuit breaker holds its new alerts (not the repeats). In place of
    # breaker.per_sender and the others, which a monitoring outage would trip at once.
    new_tickets: NewTickets = NewTickets()

    @field_validator("senders")
    @classmethod
    def _senders(cls, values: list[str]) -> list[str]:
        return check_senders(values)

    @field_validator("subject", "key")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return patterns.check_pattern(value) if value else value

    @field_validator("problem", "recovery", "ignored")
    @classmethod
    def _word_list(cls, values: list[str]) -> list[str]:
        return _words(values)

    @field_validator("states")
    @classmethod
    def _state_words(cls, values: dict[str, Priority]) -> dict[str, Priority]:
        return dict(zip(_words(list(values)), values.values(), strict=True))

    @model_validator(mode="after")
    def _says_which_mails(self) -> AlertSource:
        if not self.senders and not self.subject:
            raise ValueError(f"alert source {self.name!r} matches no mail: expected senders, subject or both")
        both = set(self.recovery) & (set(self.states) | set(self.problem))
        if both:
            raise ValueError(f"{', '.join(sorted(both))}: expected a word to be a recovery or a problem, not both")
        return self


@dataclass(frozen=True)
class Alert:
    """What one mail of an alert source says."""

    source: AlertSource
    key: str
    recovery: bool
    priority: Priority  # of a problem; for a recovery, the source's
    state: str  # the state word that decided, "" when none


def source_for(sources: Sequence[AlertSource], sender: set[str], subject: str) -> AlertSource | None:
    """The first source whose senders (folded addresses) and subject pattern the mail matches.
    Raises patterns.TimedOut."""
    for source in sources:
        if source.senders and sender_matches(source.senders, sender) is None:
            continue
        if source.subject and patterns.search(source.subject, subject) is None:
            continue
        return source
    return None


@lru_cache(maxsize=64)
def _state_re(words: tuple[str, ...]) -> re.Pattern[str]:
    # A state word, with "is " before it ("is CRITICAL"), a count after it ("FIRING:2"), and a
    # duration after it ("Resolved in 5m 0s:", "Updated problem in 2h 1m:").
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(
        rf"(?<!\w)(?:is\s+)?({alternatives})(?!\w)(?:\s*:\s*\d+)?(?:\s+in\s+(?:\d+\s*[a-z]+\s*)+(?=:))?",
        re.IGNORECASE,
    )


def read(source: AlertSource, subject: str) -> Alert:
    """The alert `subject` reports: problem or recovery, its priority, its key."""
    words = (*source.states, *source.problem, *source.recovery, *source.ignored)
    found = [m.group(1).upper() for m in _state_re(words).finditer(subject)]
    deciding = [w for w in found if w not in source.ignored]
    state = deciding[0] if deciding else ""
    recovery = state in source.recovery
    ranked = [source.states[w] for w in deciding if w in source.states]
    priority: Priority = max(ranked, key=RANK.__getitem__) if ranked else source.priority
    return Alert(source, key_of(source, subject), recovery, priority, state)


def key_of(source: AlertSource, subject: str) -> str:
    text = subjects.strip_prefixes(subject)
    if source.key:
        try:
            match = patterns.search(source.key, text)
        except patterns.TimedOut:
            match = None
        if match is not None:
            text = match.group(1) if match.re.groups and match.group(1) is not None else match.group(0)
    words = (*source.states, *source.problem, *source.recovery, *source.ignored)
    text = _state_re(words).sub(" ", text)
    normal = " ".join(re.findall(r"[\w./@-]+", text.lower())).strip(" .-")
    if len(normal) > KEY_CHARS - len(source.name) - 20:
        # Long subjects stay apart by a digest of the whole, the start stays readable.
        digest = hashlib.sha256(normal.encode()).hexdigest()[:16]
        normal = f"{normal[: KEY_CHARS - len(source.name) - 20]}#{digest}"
    return f"{source.name}:{normal}"
