"""Command lines at the top of a reply's new text -> a CommandBlock. Pure: no database, no clock.

A command line is `#word args` (any case), or the same as `Key: value` (`Assign: alice`, as RT
and Redmine users write them). Blank lines may stand before and between them; the first other
line ends the block, and the rest is the mail's text. At most MAX_LINES lines are read as
commands: a mail of ten thousand `#take` lines costs twenty.

`Key: value` is what people also write as prose ("Note: printer broken", "Status: still
down"), so such a line counts only when it is unambiguous: its key is the name of a command
that takes a value (or an alias such as Owner:), and its value is a valid one for it (a
priority, a status, one name or address, a ticket number). Anything else is the first line of
the text. `#note`, `#close` and the other commands without a value have no `Key:` form.

A `#word` line is always a command line: an unknown word is an error with a suggestion, so a
typo (`#asign`) is never silently taken for text. (The commands step decides what a mail from a
requester who starts with a hashtag is: see ingest/commands.py.)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from mailgate.reasons import Reason

MAX_LINES = 20  # command lines read at the top of one mail
MAX_LINE_CHARS = 500  # a longer line is no command

PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("open", "pending", "resolved", "closed")

# Every command, with what its arguments are, for #help and the suggestions.
USAGE: dict[str, str] = {
    "assign": "#assign <name|address|me>",
    "unassign": "#unassign",
    "take": "#take",
    "priority": "#priority low|normal|high|urgent",
    "category": "#category <category>",
    "team": "#team <team>",
    "status": "#status open|pending|resolved|closed",
    "pending": "#pending until <date>",
    "close": "#close [text]",
    "reopen": "#reopen",
    "note": "#note [text] (the rest of the mail is an internal note)",
    "cc": "#cc add|remove <address>",
    "requester": "#requester <address>",
    "merge": "#merge <ticket number>",
    "link": "#link <ticket number>",
    "undo": "#undo",
    "help": "#help",
    "mine": "#mine",
    "queue": "#queue [team]",
    "show": "#show <ticket number>",
}
COMMANDS = tuple(USAGE)
# Other names people know from other desks (Zendesk's #assignee and #group, RT's Owner: and Queue:
# is not one: #queue here is the query).
ALIASES = {"assignee": "assign", "owner": "assign", "group": "team", "state": "status", "prio": "priority"}
# Commands that have a `Key: value` form: those taking a value.
KEYED = {"assign", "priority", "category", "team", "status", "pending", "cc", "requester", "merge", "link"}
QUERIES = ("mine", "queue", "show")
# Lines answered by a digest rather than changing the ticket.
ANYWHERE_NAMES = ("help", *QUERIES)

_WEEKDAYS = {
    name: n
    for n, names in enumerate(
        [
            ("monday", "mon", "montag", "mo"),
            ("tuesday", "tue", "dienstag", "di"),
            ("wednesday", "wed", "mittwoch", "mi"),
            ("thursday", "thu", "donnerstag", "do"),
            ("friday", "fri", "freitag", "fr"),
            ("saturday", "sat", "samstag", "sa"),
            ("sunday", "sun", "sonntag", "so"),
        ]
    )
    for name in names
}
_HASH = re.compile(r"^#([A-Za-z][A-Za-z-]*)(?:\s+(.*))?$")
_KEY = re.compile(r"^([A-Za-z][A-Za-z-]*)\s*:\s*(.*)$")
# At most 320 characters, as people.address holds them (a longer one made PostgreSQL refuse
# the row, and the whole command mail went to quarantine).
_ADDRESS = re.compile(r"^<?(?=[^\s<>]{1,320}>?$)([^\s<>@,;]+@[^\s<>@,;]+\.[^\s<>@,;]+)>?$")
_NUMBER = re.compile(r"^(?:\[[^\]#]*#\s*(\d{1,12})\]|#?(\d{1,12}))$")
_NAME = re.compile(r"^[\w.+@'-]{1,320}$")
_NAMES = re.compile(r"^[\w.+@'-]{1,320}(?: [\w.'-]{1,100}){0,3}$")


@dataclass(frozen=True)
class Command:
    """One command line as the sender wrote it, read."""

    name: str  # the command (an alias resolved)
    line: str  # as written, for the receipt
    arg: str = ""  # the argument as written (a name, a category, the close text …)
    # The argument read: a priority or status, an address, a ticket number, a date, "add"/"remove".
    value: str | int | date | None = None
    action: str = ""  # #cc: "add" or "remove"
    error: str = ""  # what is wrong with the line ("" : nothing), a Reason
    suggestion: str = ""  # what the sender may have meant, a Reason

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class CommandBlock:
    commands: list[Command] = field(default_factory=list)
    # The text after the command lines (for #note: the note, its first line's words included).
    rest: str = ""
    notes: list[str] = field(default_factory=list)  # what the parser left out, for the trace

    @property
    def errors(self) -> list[Command]:
        return [c for c in self.commands if not c.ok]

    def named(self, name: str) -> list[Command]:
        return [c for c in self.commands if c.name == name]


# A line that may be a command somewhere in a text: most replies have none, and are spared the
# search for their new text (ingest/commands.py).
_CANDIDATE = re.compile(
    r"^[ \t\u00a0\u200b-\u200d\ufeff]*(?:#[A-Za-z]|(?:" + "|".join(sorted(KEYED | set(ALIASES))) + r")[ \t]*:)",
    re.I | re.M,
)


def may_hold_commands(text: str) -> bool:
    """Whether any line of `text` could be a command line (cheap, linear)."""
    return _CANDIDATE.search(text) is not None


def parse_commands(text: str, today: date) -> CommandBlock | None:
    """The command lines at the top of `text` (a reply's new text), or None when it starts with
    none. `today`: the day in the desk's zone, for dates like "monday"."""
    lines = text.replace("\r\n", "\n").split("\n")
    block = CommandBlock()
    at = 0
    while at < len(lines):
        raw = lines[at]
        stripped = _clean(raw)
        # Blank lines, and a quote the writer answers below (the new text keeps it), come first.
        if not stripped or (not block.commands and stripped.startswith(">")):
            at += 1
            continue
        if len(block.commands) >= MAX_LINES:
            if _looks_like_command(stripped):
                # Not read, and not text either: the lines past the limit (a #note among them)
                # would go to the requester as the answer. The mail is refused whole.
                block.notes.append(f"only the first {MAX_LINES} command lines were read")
                error = Reason("too_many_lines", f"more than {MAX_LINES} command lines in one mail", count=MAX_LINES)
                rest = Reason("send_rest", "send the rest in another mail")
                block.commands.append(Command("?", stripped[:80], error=error, suggestion=rest))
            break
        command = _read_line(stripped, today)
        if command is None:
            break
        at += 1
        if command.name == "note" and command.ok:
            block.commands.append(command)
            rest = "\n".join(lines[at:]).strip("\n")
            block.rest = "\n".join(p for p in (command.arg, rest) if p).strip()
            return block
        block.commands.append(command)
    if not block.commands:
        return None
    block.rest = "\n".join(lines[at:]).strip("\n")
    return block


def _clean(line: str) -> str:
    # Clients put non-breaking spaces and zero-width characters where the writer typed spaces.
    return re.sub(r"[\u00a0\u2007\u202f]", " ", re.sub(r"[\u200b-\u200d\ufeff]", "", line)).strip()


def _looks_like_command(line: str) -> bool:
    return bool(_HASH.match(line))


def _read_line(line: str, today: date) -> Command | None:
    if len(line) > MAX_LINE_CHARS:
        return (
            Command("?", line[:80] + "…", error=Reason("line_too_long", "the line is too long for a command"))
            if line[:1] == "#"
            else None
        )
    if match := _HASH.match(line):
        word, arg = match.group(1).lower(), (match.group(2) or "").strip()
        name = ALIASES.get(word, word)
        if name not in USAGE:
            unknown = Reason("unknown_command", f"unknown command #{word}", word=word)
            return Command(word, line, arg, error=unknown, suggestion=_did_you_mean(word))
        return _read(name, line, arg, today, keyed=False)
    if match := _KEY.match(line):
        word, arg = match.group(1).lower(), match.group(2).strip()
        name = ALIASES.get(word, word)
        if name not in KEYED or not arg:
            return None
        command = _read(name, line, arg, today, keyed=True)
        # Prose like "Status: still broken" is text, not a command with a wrong value.
        return command if command.ok else None
    return None


def _did_you_mean(word: str) -> Reason:
    close = difflib.get_close_matches(word, [*COMMANDS, *ALIASES], n=1, cutoff=0.6)
    if not close:
        return Reason("help_lists_commands", "#help lists the commands")
    return did_you_mean(f"#{ALIASES.get(close[0], close[0])}")


def _value_hint(word: str, choices: tuple[str, ...]) -> Reason:
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.5)
    return did_you_mean(close[0]) if close else one_of(choices)


def did_you_mean(value: str) -> Reason:
    return Reason("did_you_mean", f"did you mean {value}?", value=value)


def one_of(choices: Sequence[str]) -> Reason:
    return Reason("one_of", f"one of {', '.join(choices)}", choices=", ".join(choices))


def example(text: str) -> Reason:
    return Reason("example", f"e.g. {text}", text=text)


def _read(name: str, line: str, arg: str, today: date, *, keyed: bool) -> Command:
    usage = USAGE[name]
    bad = Reason("expected", "expected " + usage, usage=usage)

    def error(problem: Reason, suggestion: Reason | None = None) -> Command:
        return Command(name, line, arg, error=problem, suggestion=suggestion or bad)

    if name in ("unassign", "take", "reopen", "undo", "help", "mine"):
        return (
            error(Reason("takes_no_argument", f"#{name} takes no argument", name=name)) if arg else Command(name, line)
        )
    if name in ("close", "note"):
        return Command(name, line, arg)
    if name == "queue":
        if arg and not _NAME.match(arg):
            return error(Reason("team_one_word", "a team name is one word"))
        return Command(name, line, arg, value=arg.lower() or None)
    if not arg:
        return error(Reason("needs_argument", f"#{name} needs an argument", name=name))
    if name in ("priority", "status"):
        choices = PRIORITIES if name == "priority" else STATUSES
        if arg.lower() not in choices:
            return error(unknown(name, arg), _value_hint(arg, choices))
        return Command(name, line, arg, value=arg.lower())
    if name in ("assign", "category", "team"):
        # "#assign Alice Jones" names a person by name; a `Key:` line takes one word only (prose
        # like "Team: thanks for the quick help" is text).
        if not (_NAME if keyed else _NAMES).match(arg):
            return error(Reason("takes_one_name", f"#{name} takes one name", name=name))
        address = _ADDRESS.match(arg)
        return Command(name, line, arg, value=address.group(1).lower() if address else arg.lower())
    if name == "requester":
        if not (address := _ADDRESS.match(arg)):
            return error(
                Reason("not_an_address", f"not an address: {arg!r}", value=repr(arg)),
                example("#requester name@example.com"),
            )
        return Command(name, line, arg, value=address.group(1).lower())
    if name == "cc":
        action, _, target = arg.partition(" ")
        address = _ADDRESS.match(target.strip())
        if action.lower() not in ("add", "remove") or not address:
            return error(
                Reason("cc_add_or_remove", "expected add or remove and one address"),
                example("#cc add name@example.com"),
            )
        return Command(name, line, arg, value=address.group(1).lower(), action=action.lower())
    if name in ("merge", "link", "show"):
        if not (number := _NUMBER.match(arg)):
            return error(
                Reason("not_a_ticket_number", f"not a ticket number: {arg!r}", value=repr(arg)), example(f"#{name} 42")
            )
        return Command(name, line, arg, value=int(number.group(1) or number.group(2)))
    if name == "pending":
        words = arg.split(None, 1)
        when = words[1] if words[0].lower() in ("until", "bis") and len(words) > 1 else arg
        day = read_date(when, today)
        if day is None:
            return error(
                Reason("not_a_date", f"not a date: {when!r}", value=repr(when)),
                Reason("date_example", "e.g. #pending until 2026-12-10, 10.12.2026 or monday"),
            )
        if day <= today:
            return error(
                Reason("not_in_future", f"{day.isoformat()} is not in the future", day=day.isoformat()),
                Reason("date_after_today", "a date after today"),
            )
        return Command(name, line, arg, value=day)
    raise AssertionError(f"no reader for #{name}")


def unknown(what: str, value: str) -> Reason:
    """An unknown priority, status, category, team or person."""
    return Reason("unknown_value", f"unknown {what} {value!r}", what=what, value=repr(value))


def read_date(text: str, today: date) -> date | None:
    """2026-12-10, 10.12.2026 (or 10.12.), a weekday (the next one after today), tomorrow."""
    text = text.strip().lower().rstrip(".")
    try:
        if match := re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", text):
            return date(int(match[1]), int(match[2]), int(match[3]))
        if match := re.fullmatch(r"(\d{1,2})\.(\d{1,2})(?:\.(\d{4}))?", text):
            day = date(int(match[3] or today.year), int(match[2]), int(match[1]))
            return day if match[3] or day > today else day.replace(year=today.year + 1)
    except ValueError:
        return None  # 2026-02-30
    if text in ("tomorrow", "morgen"):
        return today + timedelta(days=1)
    if text in _WEEKDAYS:
        ahead = (_WEEKDAYS[text] - today.weekday() - 1) % 7 + 1
        return today + timedelta(days=ahead)
    return None
