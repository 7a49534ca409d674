"""The `mailgate` command. Thin: each command builds the App once and calls one operation.

An MTA runs `mailgate ingest` once per mail, so this package loads only what the command given
needs. `main` hands `mailgate ingest …` straight to ingest.py, which parses its arguments with
the standard library's argparse: the spool drop imports neither click nor any database code.
Every other command goes through click's root group in root.py, which names each command and the
module that defines it (click's "lazily loading subcommands" pattern); each command imports what
it uses when it runs.

    root.py         the click group, `--help`, `--version`; forwards `ingest` to ingest.py
    db.py           db upgrade                    tickets.py     tickets list|show
    daemon.py       run, check-config             messages.py    messages list|show
    ingest.py       ingest (the MTA pipe)         spool.py       spool list
    import_mail.py  import mbox|maildir           quarantine.py  quarantine list|show|retry
    imap.py         imap poll                     outbox.py      outbox list|flush
    limits.py       limits list|lift              sla.py         sla scan|show|check
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from mailgate.app import App
    from mailgate.config import Settings

EX_OK = 0
EX_USAGE = 64  # sysexits: the command was used wrongly
EX_DATAERR = 65
EX_NOINPUT = 66  # sysexits: an input file does not exist or cannot be read (the caller's mistake)
EX_TEMPFAIL = 75  # sysexits: the MTA keeps the mail and tries again
EX_CONFIG = 78


def main() -> None:
    if sys.argv[1:2] == ["ingest"]:  # what an MTA runs once per mail: no click, see ingest.py
        from mailgate.cli.ingest import main as ingest

        ingest(sys.argv[2:])
    from mailgate.cli.root import cli

    cli()


# C0 controls but tab and newline, DEL, and the C1 controls: mail content (a subject, a sender's
# name, a body, an attachment's type) may carry any of them, and a terminal obeys them (ESC c
# resets it, ESC ] rewrites its title, CSI moves the cursor).
# Bidirectional overrides and isolates too: U+202E shows "exe.txt" for "txt.exe".
_TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` without the characters a terminal would act on: for whatever shows mail content."""
    return _TERMINAL_CONTROLS.sub("", text)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"mailgate: {printable(message)}", file=sys.stderr)
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
            if self._settings.log.format == "json":
                _log_as_json()
            _warn_of_unknown_variables()
        return self._settings

    @property
    def data_dir(self) -> Path:
        """The data directory as load_settings finds it, with the standard library only."""
        from mailgate.config_file import find_data_dir, read_config_file

        return find_data_dir(read_config_file(self.config))

    def app(self) -> App:
        from mailgate.app import App

        return App.build(self.settings)


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


def _warn_of_unknown_variables() -> None:
    """pydantic-settings ignores a MAILGATE_* variable that names no setting: say so instead."""
    import logging

    from mailgate.config import unknown_variables

    for line in unknown_variables():
        logging.getLogger("mailgate.config").warning("%s", line)


def _log_as_json() -> None:
    """One JSON object per line (log.format = "json"), for ELK, Loki or journald's fields."""
    import logging

    from pythonjsonlogger.json import JsonFormatter

    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def schema_hint(reason: str) -> str:
    """`reason` (a database error's text), with the way out when the schema is missing."""
    if "no such table" in reason or ("relation" in reason and "does not exist" in reason):
        return f"the database has no mailgate schema yet: run `mailgate db upgrade` ({reason})"
    return reason


def explain(exc: Exception) -> tuple[str, int]:
    """What a command let escape, as one line and an exit status: the last line of defence."""
    from mailgate.config_file import ConfigError

    if isinstance(exc, ConfigError):
        return str(exc), EX_CONFIG
    # A database error can only come from SQLAlchemy once something imported it.
    db_errors = sys.modules.get("sqlalchemy.exc")
    if db_errors is not None and isinstance(exc, db_errors.OperationalError | db_errors.ProgrammingError):
        text = str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
        hint = schema_hint(text)
        if hint != text:
            return hint, EX_CONFIG
        return f"database error: {text}", EX_TEMPFAIL
    import logging

    logging.getLogger("mailgate").debug("unhandled", exc_info=True)
    return f"error: {type(exc).__name__}: {exc}", 1
