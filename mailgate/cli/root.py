"""The click root group: every command but the MTA's pipe, `--help` and `--version`.

It names each command and the module that defines it (click's "lazily loading subcommands"
pattern), so `mailgate --help` loads every command module for its short help and none imports
more than click. `ingest` is parsed by ingest.py itself; the group only forwards to it.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from mailgate.cli import Context, explain, fail, printable

# Each command and where it is defined, as "module.attribute".
COMMANDS = {
    "attachments": "mailgate.cli.attachments.attachments",
    "check-config": "mailgate.cli.daemon.check_config_cmd",
    "db": "mailgate.cli.db.db",
    "imap": "mailgate.cli.imap.imap",
    "import": "mailgate.cli.import_mail.import_cmd",
    "ingest": "mailgate.cli.root.ingest_cmd",
    "limits": "mailgate.cli.limits.limits",
    "messages": "mailgate.cli.messages.messages",
    "outbox": "mailgate.cli.outbox.outbox",
    "quarantine": "mailgate.cli.quarantine.quarantine",
    "run": "mailgate.cli.daemon.run_cmd",
    "sla": "mailgate.cli.sla.sla",
    "spool": "mailgate.cli.spool.spool",
    "tickets": "mailgate.cli.tickets.tickets",
}


pass_ctx = click.make_pass_decorator(Context)


class _Mailgate(click.Group):
    """The root group: loads a command's module only when that command is asked for, and turns
    whatever a command lets escape into one line and an exit status."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, name = COMMANDS[cmd_name].rsplit(".", 1)
        command = getattr(importlib.import_module(module), name)
        if not isinstance(command, click.Command):
            raise TypeError(f"{COMMANDS[cmd_name]} is not a click command")
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise  # click prints these itself
        except Exception as exc:  # the last line of defence: one readable line, not a traceback
            fail(*explain(exc))


class EnumChoice(click.Choice):
    """A click.Choice over an enum's values, imported only when the option is used or its help
    shown: the enums live beside the ORM models, which most commands never load."""

    def __init__(self, module: str, name: str) -> None:
        self._enum = (module, name)
        super().__init__(())

    @property
    def choices(self) -> Sequence[str]:
        module, name = self._enum
        return [member.value for member in getattr(importlib.import_module(module), name)]

    @choices.setter
    def choices(self, _value: Sequence[str]) -> None:
        """click.Choice.__init__ sets the choices; the property above answers instead."""


class TicketNumber(click.ParamType):
    """A ticket as people write it: `12`, `#12`, `HD#12`, `HD #12`, `[HD #12]` (any tag prefix)."""

    name = "ticket"
    _FORM = re.compile(r"\[?\s*(?:[A-Za-z][A-Za-z0-9_-]*\s*)?#?\s*(\d{1,18})\s*\]?")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        found = self._FORM.fullmatch(str(value).strip())
        if found is None:
            self.fail(f"{value!r}: expected a ticket number such as 12, #12 or HD #12", param, ctx)
        return int(found.group(1))


_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Duration(click.ParamType):
    """An age such as `90m`, `12h`, `3d` or `2w`."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        found = re.fullmatch(r"(\d{1,6})\s*([mhdw])", str(value).strip().lower())
        if found is None:
            self.fail(f"{value!r}: expected a number and a unit (m, h, d, w), such as 3d or 12h", param, ctx)
        return timedelta(**{_DURATION_UNITS[found.group(2)]: int(found.group(1))})


# C1 controls pass json.dumps as they are (it escapes only C0): escaped here, so JSON of mail
# content cannot steer a terminal either.
_C1 = re.compile(r"[\x7f-\x9f]")


def print_json(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False, indent=2)
    click.echo(_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def print_lines(lines: list[str]) -> None:
    """Every command's way to show stored content: nothing in it can steer the terminal."""
    click.echo(printable("\n".join(lines)))


def with_session(ctx: Context, action: Callable[[Any], None]) -> None:
    app = ctx.app()
    try:
        # A reader: `mailgate tickets list | less` may hold it open for as long as it likes.
        with app.read_sessions() as session:
            action(session)
    finally:
        app.close()


@click.group(cls=_Mailgate, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailgate", prog_name="mailgate", message="%(prog)s %(version)s")
@click.option("--config", "-c", type=click.Path(path_type=Path), help="Config file (default: mailgate.toml).")
@click.option("--verbose", "-v", is_flag=True, help="Log every step to stderr.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, verbose: bool) -> None:
    """mailgate: turn a support mailbox into a help desk."""
    ctx.obj = Context(config, verbose)


@click.command(
    "ingest",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def ingest_cmd(ctx: Context, args: tuple[str, ...]) -> None:
    """Put mail from files or stdin into the spool: the MTA pipe (see `mailgate ingest --help`)."""
    from mailgate.cli.ingest import run

    run(list(args), ctx)
