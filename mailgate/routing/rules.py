"""[[routes]]: routing rules, tried in order on every new ticket.

    [[routes]]
    name = "printers"
    recipients = ["printers@example.com"]   # RCPT TO, To or Cc: one of the desk's addresses
    senders = ["example.org", "ceo@example.com"]   # an address, or a domain and its subdomains
    subject = "printer|toner"              # regular expressions, case does not matter
    body = "paper jam"                     # searched in the first 20,000 characters of the text
    category = "hardware"
    priority = "high"
    team = "facilities"
    assignee = "alice"                     # a [[staff]] member: address, alias, name or user name

A rule matches when every condition it names matches (within a list, any entry will do); a rule
of no conditions matches every new ticket. Rules are tried in order, and each matching rule sets
the fields no earlier matching rule set: put the specific rules first, the general ones after
("mail from the CEO is urgent" before "printers@ goes to facilities", and the CEO's printer
ticket is both). What no rule sets stays for the dispatcher. A From proves nothing: a rule on
senders sorts mail, it grants nothing (anyone can type that From).

The models and the matching are here (no I/O); the step is ingest/route.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailgate.addresses import domain_of, fold_address
from mailgate.reasons import Reason
from mailgate.routing import patterns

if TYPE_CHECKING:
    from mailgate.config import Settings, StaffMember

Priority = Literal["low", "normal", "high", "urgent"]
FIELDS = ("category", "priority", "team", "assignee")
_ADDRESS = re.compile(r"[^@\s<>()\[\],;:\"]+@[A-Za-z0-9.-]+")
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_senders(values: list[str]) -> list[str]:
    """Addresses (alice@example.com) and domains (example.com or @example.com), lowercased."""
    found = []
    for value in values:
        entry = value.strip().lower().rstrip(".")
        if _ADDRESS.fullmatch(entry):
            found.append(entry)
        elif _DOMAIN.fullmatch(entry.removeprefix("@")):
            found.append(entry.removeprefix("@"))
        else:
            raise ValueError(f"addresses like ops@example.com or domains like example.com ({value!r} is neither)")
    return found


def sender_matches(entries: Sequence[str], addresses: set[str]) -> str | None:
    """The entry that one of `addresses` (folded) matches: the same mailbox, or an address in
    that domain or one of its subdomains."""
    for entry in entries:
        for address in addresses:
            if "@" in entry:
                if fold_address(entry) == address:
                    return entry
            elif (domain := domain_of(address)) == entry or domain.endswith("." + entry):
                return entry
    return None


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Conditions: each one given must match.
    recipients: list[str] = Field(default_factory=list)
    senders: list[str] = Field(default_factory=list)
    subject: str = ""
    body: str = ""
    # Actions: what the rule sets on the new ticket.
    category: str = Field(default="", max_length=100)
    priority: Priority | None = None
    team: str = Field(default="", max_length=100)
    assignee: str = ""

    @field_validator("recipients")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _ADDRESS.fullmatch(value.strip()):
                raise ValueError(f"addresses like printers@example.com ({value!r} is not one)")
        return [v.strip().lower() for v in values]

    @field_validator("senders")
    @classmethod
    def _senders(cls, values: list[str]) -> list[str]:
        return check_senders(values)

    @field_validator("subject", "body")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return patterns.check_pattern(value) if value else value

    @model_validator(mode="after")
    def _does_something(self) -> Route:
        if not any(getattr(self, name) for name in FIELDS):
            raise ValueError(f"rule {self.name!r} sets nothing: expected at least one of {', '.join(FIELDS)}")
        return self

    def actions(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in FIELDS if getattr(self, name)}


@dataclass(frozen=True)
class Facts:
    """What the rules look at in a mail, each read once and bounded."""

    recipients: set[str]  # folded: the envelope's RCPT TO, To and Cc
    senders: set[str]  # folded: From (and the sender's canonical staff address)
    subject: str
    body: str  # the start of the text (patterns.BODY_PREFIX_CHARS)


@dataclass
class Hit:
    """A rule that matched: why, what it set, and what it would have set that an earlier one had."""

    rule: Route
    why: list[str]
    sets: dict[str, str] = field(default_factory=dict)
    taken: dict[str, str] = field(default_factory=dict)


def why_matches(rule: Route, facts: Facts) -> list[str] | None:
    """The conditions of `rule` that `facts` meet, in words; None when one does not match.
    Raises patterns.TimedOut when a pattern ran out of time."""
    why: list[str] = []
    if rule.recipients:
        wanted = {fold_address(r) for r in rule.recipients}
        found = sorted(wanted & facts.recipients)
        if not found:
            return None
        why.append(Reason("rule_recipient", f"recipient {found[0]}", address=found[0]))
    if rule.senders:
        entry = sender_matches(rule.senders, facts.senders)
        if entry is None:
            return None
        why.append(Reason("rule_sender", f"sender {entry}", entry=entry))
    for name, pattern, text in (("subject", rule.subject, facts.subject), ("body", rule.body, facts.body)):
        if not pattern:
            continue
        match = patterns.search(pattern, text)
        if match is None:
            return None
        found_text = repr(match.group(0)[:60])
        why.append(Reason(f"rule_{name}", f"{name} ~ {found_text}", text=found_text))
    return why or [Reason("rule_every", "every new ticket")]


def decide(routes: Sequence[Route], facts: Facts, already: dict[str, str] | None = None) -> tuple[list[Hit], list[str]]:
    """The rules that match, in order, each with the fields it sets (those no earlier rule, nor
    `already` — an alert source's decisions — set); and notes on rules whose pattern timed out."""
    taken: dict[str, str] = dict(already or {})
    hits: list[Hit] = []
    notes: list[str] = []
    for rule in routes:
        try:
            why = why_matches(rule, facts)
        except patterns.TimedOut as exc:
            notes.append(f"rule {rule.name}: pattern {str(exc)[:80]!r} ran out of time on this mail: no match")
            continue
        if why is None:
            continue
        hit = Hit(rule, why)
        for name, value in rule.actions().items():
            if name in taken:
                hit.taken[name] = value
            else:
                hit.sets[name] = taken[name] = value
        hits.append(hit)
    return hits, notes


# -- checks against the rest of the config ----------------------------------------------------


def find_staff(staff: Sequence[StaffMember], value: str) -> list[StaffMember]:
    """The staff members `value` names: an address or alias, else a full name or the user name
    (the address before '@'), case ignored. More than one: ambiguous."""
    wanted = value.strip().lower()
    by_address = [m for m in staff if wanted in m.addresses]
    if by_address:
        return by_address
    return [m for m in staff if wanted in (m.name.strip().lower(), m.address.partition("@")[0])]


def known_teams(settings: Settings) -> set[str]:
    return {t for m in settings.staff for t in m.all_teams} | set(settings.sla.teams)


def problems(settings: Settings) -> list[str]:
    """What is wrong with the routes given the staff, teams and addresses configured: one line
    each, naming the key, the value and what was expected."""
    lines = []
    own = {fold_address(a) for a in settings.addresses.all_own()}
    teams = known_teams(settings)
    names: set[str] = set()
    for n, rule in enumerate(settings.routes):
        if rule.name in names:
            lines.append(f"routes.{n}.name = {rule.name!r}: expected a name no other rule has")
        names.add(rule.name)
        for address in rule.recipients:
            if fold_address(address) not in own:
                lines.append(
                    f"routes.{n}.recipients = {address!r}: expected one of the desk's addresses "
                    f"({', '.join(sorted(own))}); mail to another address is not the desk's "
                    "(list it in addresses.own)"
                )
        if rule.team and rule.team not in teams:
            known = ", ".join(sorted(teams)) or "none configured"
            lines.append(
                f"routes.{n}.team = {rule.team!r}: expected a team of a [[staff]] member or of [sla.teams] ({known})"
            )
        if rule.assignee:
            found = find_staff(settings.staff, rule.assignee)
            if len(found) > 1:
                lines.append(
                    f"routes.{n}.assignee = {rule.assignee!r}: names {', '.join(m.address for m in found)}: "
                    "expected one staff member (write the address)"
                )
            elif not found:
                staff = ", ".join(m.address for m in settings.staff) or "none configured"
                lines.append(
                    f"routes.{n}.assignee = {rule.assignee!r}: expected a [[staff]] member's address, alias "
                    f"or name ({staff})"
                )
    return lines
