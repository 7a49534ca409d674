"""The `mailgate` command. Thin: each command builds the App once and calls one operation.

An MTA runs `mailgate ingest` once per mail, so this package loads only what the command given
needs: the root group below names every command and the module that defines it (click's
"lazily loading subcommands" pattern), and each command imports what it uses when it runs.
`mailgate --help` loads every command module for its short help; none imports more than click.

    db.py           db upgrade                    tickets.py     tickets list|show
    daemon.py       run, check-config             messages.py    messages list|show
    ingest.py       ingest (the MTA pipe)         spool.py       spool list
    import_mail.py  import mbox|maildir           quarantine.py  quarantine list|show|retry
    imap.py         imap poll                     outbox.py      outbox list|flush
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from mailgate.app import App
    from mailgate.config import Settings

EX_OK = 0
EX_DATAERR = 65
EX_NOINPUT = 66  # sysexits: an input file does not exist or cannot be read (the caller's mistake)
EX_TEMPFAIL = 75  # sysexits: the MTA keeps the mail and tries again
EX_CONFIG = 78

# Each command and where it is defined, as "module.attribute".
COMMANDS = {
    "check-config": "mailgate.cli.daemon.check_config_cmd",
    "db": "mailgate.cli.db.db",
    "imap": "mailgate.cli.imap.imap",
    "import": "mailgate.cli.import_mail.import_cmd",
    "ingest": "mailgate.cli.ingest.ingest_cmd",
    "messages": "mailgate.cli.messages.messages",
    "outbox": "mailgate.cli.outbox.outbox",
    "quarantine": "mailgate.cli.quarantine.quarantine",
    "run": "mailgate.cli.daemon.run_cmd",
    "spool": "mailgate.cli.spool.spool",
    "tickets": "mailgate.cli.tickets.tickets",
}


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"mailgate: {message}", err=True)
    sys.exit(code)


class Context:
    def __init__(self, config: Path | None, verbose: bool) -> None:
        self.config = config
        self.verbose = verbose
        self._settings: Settings | None = None
        if verbose:
            _start_logging(verbose)

    @property
    def settings(self) -> Settings:
        """The validated settings. Every command that logs loads them first, so logging is set
        up here: the spool drop, which needs only the data directory, never imports logging."""
        if self._settings is None:
            from mailgate.config import load_settings

            _start_logging(self.verbose)
            self._settings = load_settings(self.config)
        return self._settings

    @property
    def data_dir(self) -> Path:
        """The data directory as load_settings finds it, with the standard library only."""
        from mailgate.config_file import find_data_dir, read_config_file

        return find_data_dir(read_config_file(self.config))

    def app(self) -> App:
        from mailgate.app import App

        return App.build(self.settings)


pass_ctx = click.make_pass_decorator(Context)


def _start_logging(verbose: bool) -> None:
    import logging

    # One line per event on stderr; journald adds the time and the unit.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if verbose:
        logging.getLogger("mailgate").setLevel(logging.DEBUG)


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
            fail(*_explain(exc))


def _explain(exc: Exception) -> tuple[str, int]:
    from mailgate.config_file import ConfigError

    if isinstance(exc, ConfigError):
        return str(exc), EX_CONFIG
    # A database error can only come from SQLAlchemy once something imported it.
    db_errors = sys.modules.get("sqlalchemy.exc")
    if db_errors is not None and isinstance(exc, db_errors.OperationalError | db_errors.ProgrammingError):
        text = str(exc.orig)
        if "no such table" in text or "does not exist" in text:
            return f"the database has no mailgate schema yet ({text}): run `mailgate db upgrade`", EX_CONFIG
        return f"database error: {text}", EX_TEMPFAIL
    import logging

    logging.getLogger("mailgate").debug("unhandled", exc_info=True)
    return f"error: {type(exc).__name__}: {exc}", 1


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


def print_lines(lines: list[str]) -> None:
    click.echo("\n".join(lines))


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


def main() -> None:
    cli()
