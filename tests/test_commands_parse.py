"""The command lines at the top of a reply, read without a database (mailgate/commands/parse.py)."""

from __future__ import annotations

from datetime import date

import pytest

from mailgate.commands.parse import MAX_LINES, parse_commands, read_date

TODAY = date(2026, 12, 3)  # a Thursday


def read(text: str):
    return parse_commands(text, TODAY)


def names(text: str) -> list[str]:
    block = read(text)
    return [c.name for c in block.commands] if block else []


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ("#assign alice", "assign", "alice"),
        ("#ASSIGN Alice@Example.com", "assign", "alice@example.com"),
        ("#assign me", "assign", "me"),
        ("#assign Alice Jones", "assign", "alice jones"),
        ("#unassign", "unassign", None),
        ("#take", "take", None),
        ("#priority HIGH", "priority", "high"),
        ("#category hardware", "category", "hardware"),
        ("#team network", "team", "network"),
        ("#status resolved", "status", "resolved"),
        ("#pending until 2026-12-10", "pending", date(2026, 12, 10)),
        ("#pending until 10.12.2026", "pending", date(2026, 12, 10)),
        ("#pending until monday", "pending", date(2026, 12, 7)),
        ("#close", "close", None),
        ("#reopen", "reopen", None),
        ("#note", "note", None),
        ("#cc remove bob@example.com", "cc", "bob@example.com"),
        ("#requester <dana@example.com>", "requester", "dana@example.com"),
        ("#merge 12", "merge", 12),
        ("#merge [HD #12]", "merge", 12),
        ("#link #7", "link", 7),
        ("#undo", "undo", None),
        ("#help", "help", None),
        ("#mine", "mine", None),
        ("#queue", "queue", None),
        ("#queue network", "queue", "network"),
        ("#show 42", "show", 42),
        ("#assignee alice", "assign", "alice"),  # Zendesk's name
    ],
)
def test_every_command_is_read_with_its_argument(line: str, name: str, value: object) -> None:
    block = read(line)
    assert block is not None
    (command,) = block.commands
    assert (command.name, command.value, command.error) == (name, value, "")


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ("Assign: alice", "assign", "alice"),
        ("Owner: alice", "assign", "alice"),
        ("Priority: high", "priority", "high"),
        ("Category: hardware", "category", "hardware"),
        ("Team: network", "team", "network"),
        ("Status: pending", "status", "pending"),
        ("Pending: until 2026-12-10", "pending", date(2026, 12, 10)),
        ("Cc: add bob@example.com", "cc", "bob@example.com"),
        ("Requester: dana@example.com", "requester", "dana@example.com"),
        ("Merge: 12", "merge", 12),
        ("Link: 12", "link", 12),
    ],
)
def test_key_value_lines_are_the_same_commands(line: str, name: str, value: object) -> None:
    (command,) = read(line).commands
    assert (command.name, command.value) == (name, value)


@pytest.mark.parametrize(
    "text",
    [
        "Note: printer broken on the 3rd floor",
        "Status: still broken after the restart",
        "Team: thanks for the quick help",
        "Priority: whatever you think",
        "Cc: bob@example.com",
        "Subject: printer",
        "Close: the window",
        "Hello, the printer is broken.",
        "",
        "#1 problem: the printer",
    ],
)
def test_prose_that_looks_like_a_key_is_not_a_command(text: str) -> None:
    assert read(text) is None


def test_commands_stop_at_the_first_other_line_and_blank_lines_may_stand_between() -> None:
    block = read("\n#assign alice\n\npriority: high\nThanks, done.\n#close\n")
    assert [c.name for c in block.commands] == ["assign", "priority"]
    assert block.rest == "Thanks, done.\n#close"


def test_commands_below_a_quote_the_writer_answers_are_read() -> None:
    block = read("> Could you look at it?\n>\n\n#assign alice\nsure")
    assert [c.name for c in block.commands] == ["assign"]
    assert read("> #assign alice\n\nthanks") is None  # a quoted command is someone else's


def test_an_unknown_command_is_an_error_with_a_suggestion() -> None:
    (command,) = read("#asign alice").commands
    assert command.error == "unknown command #asign"
    assert command.suggestion == "did you mean #assign?"
    (far,) = read("#xyzzy").commands
    assert far.suggestion == "#help lists the commands"


def test_a_wrong_value_is_an_error_naming_the_nearest_one() -> None:
    block = read("#priority hgh\n#status done\n#pending until someday\n#merge abc\n#take now")
    assert [c.suggestion for c in block.errors[:1]] == ["did you mean high?"]
    assert len(block.errors) == 5


def test_note_takes_the_rest_of_the_mail_whatever_it_says() -> None:
    block = read("#priority high\n#note the vendor called\n#assign bob\nmore")
    assert names("#priority high\n#note x\n#assign bob") == ["priority", "note"]
    assert block.rest == "the vendor called\n#assign bob\nmore"


def test_close_keeps_its_text_and_the_rest() -> None:
    block = read("#close replaced the toner\n\nRegards")
    assert block.commands[0].arg == "replaced the toner"
    assert block.rest == "Regards"


def test_only_max_lines_command_lines_are_read() -> None:
    block = read("#take\n" * 10_000)
    assert len(block.commands) == MAX_LINES + 1  # the one past the limit, as an error: refused whole
    assert [c.error for c in block.errors] == [f"more than {MAX_LINES} command lines in one mail"]
    assert block.notes


def test_non_breaking_and_zero_width_spaces_from_clients_are_spaces() -> None:
    (command,) = read("\u200b#assign\u00a0alice").commands
    assert command.value == "alice"


def test_dates() -> None:
    assert read_date("2026-02-30", TODAY) is None
    assert read_date("10.12.", TODAY) == date(2026, 12, 10)
    assert read_date("1.1.", TODAY) == date(2027, 1, 1)
    assert read_date("tomorrow", TODAY) == date(2026, 12, 4)
    assert read_date("thursday", TODAY) == date(2026, 12, 10)  # the next one, not today
    assert read_date("Montag", TODAY) == date(2026, 12, 7)
    past = read("#pending until 2026-12-01").commands[0]
    assert "not in the future" in past.error


def test_a_text_without_any_command_like_line_is_passed_over_cheaply() -> None:
    from mailgate.commands.parse import may_hold_commands

    assert not may_hold_commands("Hello,\nthe printer jams.\nNote: it is the one on floor 3\n")
    assert may_hold_commands("> quoted\n\n  #assign alice\n")
    assert may_hold_commands("Priority: high")
    assert may_hold_commands("\u200bOwner: alice")
