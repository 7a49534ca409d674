"""The `mailgate` command. Thin: each command builds the App once and calls one operation.

Only click and the standard library are imported up front; each command imports what it uses.
An MTA runs `mailgate ingest` once per mail, and the ORM, pydantic, Jinja2 and alembic would
cost it several times the work of writing the mail into the spool.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    import mailbox

    from mailgate.app import App
    from mailgate.config import Settings
    from mailgate.spool import Waiting

EX_OK = 0
EX_DATAERR = 65
EX_NOINPUT = 66  # sysexits: an input file does not exist or cannot be read (the caller's mistake)
EX_TEMPFAIL = 75  # sysexits: the MTA keeps the mail and tries again
EX_CONFIG = 78
SPOOL_LIST_LINES = 200  # `mailgate spool list` shows the oldest this many, then the total


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"mailgate: {message}", err=True)
    sys.exit(code)


class Context:
    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from mailgate.config import load_settings

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


class _Mailgate(click.Group):
    """The command group: whatever a command lets escape becomes one line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise  # click prints these itself
        except Exception as exc:  # the last line of defence: one readable line, not a traceback
            _fail(*_explain(exc))


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
    logging.getLogger("mailgate").debug("unhandled", exc_info=True)
    return f"error: {type(exc).__name__}: {exc}", 1


class _EnumChoice(click.Choice):
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


@click.group(cls=_Mailgate, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailgate", prog_name="mailgate", message="%(prog)s %(version)s")
@click.option("--config", "-c", type=click.Path(path_type=Path), help="Config file (default: mailgate.toml).")
@click.option("--verbose", "-v", is_flag=True, help="Log every step to stderr.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, verbose: bool) -> None:
    """mailgate: turn a support mailbox into a help desk."""
    # One line per event on stderr; journald adds the time and the unit.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if verbose:
        logging.getLogger("mailgate").setLevel(logging.DEBUG)
    ctx.obj = Context(config)


# -- database ---------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the database schema to the newest version."""
    from mailgate.db import upgrade

    url = ctx.settings.effective_database_url
    upgrade(url)
    click.echo(f"database schema is up to date ({_redact(url)})")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- daemon -----------------------------------------------------------------------------------


@cli.command("run")
@pass_ctx
def run_cmd(ctx: Context) -> None:
    """Run the daemon: SMTP listener, IMAP pollers, outbox sender and scheduler."""
    from mailgate.daemon import run

    if logging.getLogger("mailgate").getEffectiveLevel() > logging.INFO:
        logging.getLogger("mailgate").setLevel(logging.INFO)  # the daemon logs every event
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: a line per SMTP command
    app = ctx.app()
    try:
        run(app)
    finally:
        app.close()


@cli.command("check-config")
@pass_ctx
def check_config_cmd(ctx: Context) -> None:
    """Check the configuration: the database, each IMAP mailbox and the relay, one line each."""
    from mailgate.checks import run_checks

    results = run_checks(ctx.settings)
    for name, problem in results:
        click.echo(f"{'OK  ' if problem is None else 'FAIL'} {name}{'' if problem is None else ': ' + problem}")
    sys.exit(0 if all(problem is None for _, problem in results) else 1)


# -- ingest -----------------------------------------------------------------------------------


@cli.command("ingest")
@click.argument("files", nargs=-1, type=click.Path(allow_dash=True, path_type=Path))
@click.option("--now", is_flag=True, help="Parse and store in this process, for setups without a running daemon.")
@click.option("--source", default="pipe", show_default=True, help="Where the mail came from (shown in history).")
@click.option("--recipient", "recipients", multiple=True, help="Envelope recipient (as the MTA passes it).")
@click.option("--sender", default=None, help="Envelope sender (MAIL FROM; '' for a bounce), e.g. Postfix's ${sender}.")
@pass_ctx
def ingest_cmd(
    ctx: Context, files: tuple[Path, ...], now: bool, source: str, recipients: tuple[str, ...], sender: str | None
) -> None:
    """Take mail from FILES (or standard input, '-'): what an MTA pipe runs, once per mail.

    The mail is written to the spool, and the running daemon (`mailgate run`) ingests it at once.
    Exit status 0 once the mail is on stable storage; 75 (EX_TEMPFAIL) when it cannot be kept for
    now, so the MTA keeps it and retries; 66 (EX_NOINPUT) when a FILE cannot be read.

    With --now the mail is parsed and stored in this process instead: exit 0 when stored,
    duplicate or quarantined, 75 on a temporary failure (the database is down or locked).
    """
    if now:
        _ingest_now(ctx, files, source, recipients, sender)
    _drop_into_spool(ctx, files, source, recipients, sender)


def _drop_into_spool(
    ctx: Context, files: tuple[Path, ...], source: str, recipients: tuple[str, ...], sender: str | None
) -> NoReturn:
    from datetime import UTC, datetime

    from mailgate.config_file import ConfigError
    from mailgate.spool import Envelope, Spool, spool_dir

    try:
        spool = Spool(spool_dir(ctx.data_dir))
    except ConfigError as exc:  # the MTA keeps the mail until someone fixed the config
        _fail(f"cannot start, mail left with the MTA: {exc}", EX_TEMPFAIL)

    def keep(path: Path, raw: bytes) -> int:
        envelope = Envelope(source=source, sender=sender, recipients=recipients, received_at=datetime.now(UTC))
        try:
            name = spool.put(raw, envelope)
        except OSError as exc:  # disk full, read-only, no such folder: the MTA tries again later
            click.echo(f"{path}: cannot write to the spool {spool.root}, mail left with the MTA: {exc}", err=True)
            return EX_TEMPFAIL
        spool.wake_daemon()
        click.echo(f"{path}: spooled as {name}")
        return EX_OK

    _each_mail(files, keep)


def _ingest_now(
    ctx: Context, files: tuple[Path, ...], source: str, recipients: tuple[str, ...], sender: str | None
) -> NoReturn:
    from mailgate.ingest.pipeline import TemporaryFailure, ingest

    try:
        app = ctx.app()
    except Exception as exc:  # whatever stops us, the MTA must keep the mail and retry, not bounce it
        _fail(f"cannot start, mail left with the MTA: {type(exc).__name__}: {exc}", EX_TEMPFAIL)

    def keep(path: Path, raw: bytes) -> int:
        try:
            result = ingest(app, raw, source, recipients, sender)
        except TemporaryFailure as exc:
            click.echo(f"{path}: temporary failure, not stored: {exc}", err=True)
            return EX_TEMPFAIL
        number = f" {app.settings.tickets.tag_prefix} #{result.ticket_number}" if result.ticket_number else ""
        click.echo(f"{path}: {result.outcome}{number}")
        return EX_OK

    try:
        _each_mail(files, keep)
    finally:
        app.close()


def _each_mail(files: tuple[Path, ...], keep: Callable[[Path, bytes], int]) -> NoReturn:
    """Read each of FILES (none: standard input) and hand it to `keep`, which returns an exit
    status; exit with the most serious: 75 (try again later) over 66 (a FILE unreadable) over 0."""
    status = EX_OK
    for path in files or (Path("-"),):
        stdin = str(path) == "-"
        try:
            raw = click.get_binary_stream("stdin").read() if stdin else path.read_bytes()
        except OSError as exc:
            click.echo(f"{path}: cannot read: {exc.strerror}", err=True)
            # A FILE that is not there is the caller's mistake; the MTA's own pipe failing is not.
            status = max(status, EX_TEMPFAIL if stdin else EX_NOINPUT)
            continue
        status = max(status, keep(path, raw))
    sys.exit(status)


def _open_box(kind: str, path: Path) -> mailbox.Mailbox[Any]:
    import mailbox  # the email package behind it costs a pipe process more than the spool write

    if kind == "mbox":
        if not path.is_file():
            _fail(f"{path} is not a file; an mbox is one file (use `import maildir` for a folder)", EX_DATAERR)
        return mailbox.mbox(path, create=False)
    if not (path / "cur").is_dir() and not (path / "new").is_dir():
        _fail(f"{path} is not a Maildir (it has no cur/ or new/ folder)", EX_DATAERR)
    return mailbox.Maildir(path, create=False)


def _mails(box: mailbox.Mailbox[Any]) -> Iterator[bytes]:
    import mailbox

    for key in box.iterkeys():
        data = box.get_bytes(key)
        if isinstance(box, mailbox.mbox) and data.startswith(b"From "):
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""  # the mbox separator line
        yield data


@cli.command("import")
@click.argument("kind", type=click.Choice(["mbox", "maildir"]))
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@pass_ctx
def import_cmd(ctx: Context, kind: str, path: Path) -> None:
    """Ingest every mail of an mbox file or a Maildir folder, with a summary at the end."""
    from mailgate.ingest.pipeline import Outcome, TemporaryFailure, ingest

    app = ctx.app()
    source = f"import:{path.name}"
    counts: Counter[str] = Counter()
    box = _open_box(kind, path)
    try:
        total = len(box)
        if total == 0:
            _fail(
                f"{path} holds no mail as {kind} (is it a{'n mbox file' if kind == 'mbox' else ' Maildir'}?)",
                EX_DATAERR,
            )
        with click.progressbar(_mails(box), length=total, label=f"importing {path.name}", file=sys.stderr) as bar:
            for raw in bar:
                try:
                    counts[ingest(app, raw, source).outcome] += 1
                except TemporaryFailure as exc:
                    counts["failed"] += 1
                    click.echo(f"\ntemporary failure (run the import again to retry): {exc}", err=True)
    finally:
        box.close()  # an mbox holds its file open (and locked) until then
    labels = [
        (Outcome.NEW_TICKET, "new tickets"),
        (Outcome.REPLY, "replies"),
        (Outcome.DUPLICATE, "duplicates"),
        (Outcome.AUTO, "auto-generated"),
        (Outcome.BOUNCE, "bounces"),
        (Outcome.QUARANTINED, "quarantined"),
        ("failed", "failed (not stored)"),
    ]
    click.echo(f"{total} mails: " + ", ".join(f"{counts[k]} {label}" for k, label in labels))
    app.close()
    sys.exit(EX_TEMPFAIL if counts["failed"] else EX_OK)


# -- tickets ----------------------------------------------------------------------------------


@cli.group()
def tickets() -> None:
    """Look at tickets."""


@tickets.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=_EnumChoice("mailgate.models", "Status"),
    help="Only tickets with this status (repeatable).",
)
@pass_ctx
def tickets_list(ctx: Context, statuses: tuple[str, ...]) -> None:
    """One line per ticket."""
    from mailgate import views

    _with_session(
        ctx, lambda s: _print(views.ticket_list(s, ctx.settings.tickets.tag_prefix, statuses) or ["no tickets"])
    )


@tickets.command("show")
@click.argument("number", type=int)
@pass_ctx
def tickets_show(ctx: Context, number: int) -> None:
    """The whole thread of ticket NUMBER as a person reads it."""
    from mailgate import views

    def show(session: Any) -> None:
        lines = views.ticket_thread(session, ctx.settings.tickets.tag_prefix, number)
        if lines is None:
            _fail(f"there is no ticket #{number}")
        _print(lines)

    _with_session(ctx, show)


# -- imap -------------------------------------------------------------------------------------


@cli.group()
def imap() -> None:
    """The IMAP mailboxes of the config."""


@imap.command("poll")
@click.argument("names", nargs=-1)
@pass_ctx
def imap_poll(ctx: Context, names: tuple[str, ...]) -> None:
    """Read new mail from the mailboxes NAMES (default: all) once, as the daemon would."""
    from mailgate.transports.imap import ImapPoller

    app = ctx.app()
    boxes = [m for m in app.settings.imap if not names or m.name in names]
    unknown = set(names) - {m.name for m in app.settings.imap}
    if unknown or not boxes:
        _fail(f"no [[imap]] mailbox named {', '.join(sorted(unknown)) or '(none configured)'} in the config")
    status = EX_OK
    for box in boxes:
        try:
            with ImapPoller(app, box) as poller:
                report = poller.poll_once()
        except Exception as exc:  # the server is down, the password wrong …: say so, go on
            click.echo(f"{box.name}: failed: {type(exc).__name__}: {exc}", err=True)
            status = EX_TEMPFAIL
            continue
        if report.standby:
            click.echo(f"{box.name}: another daemon holds this mailbox; nothing done")
            continue
        done = ", ".join(f"{n} {k}" for k, n in sorted(report.outcomes.items())) or "no new mail"
        click.echo(f"{box.name}: {done}; {report.failed} failed, {report.to_failure_folder} to the failure folder")
    app.close()
    sys.exit(status)


# -- messages ---------------------------------------------------------------------------------


@cli.group()
def messages() -> None:
    """Stored mail, including mail that opened no ticket (auto-replies, bounces)."""


@messages.command("list")
@click.option("--no-ticket", "without_ticket", is_flag=True, help="Only mail not attached to any ticket.")
@click.option("--kind", type=_EnumChoice("mailgate.models", "MessageKind"))
@pass_ctx
def messages_list(ctx: Context, without_ticket: bool, kind: str | None) -> None:
    from mailgate import views

    prefix = ctx.settings.tickets.tag_prefix
    _with_session(
        ctx, lambda s: _print(views.message_list(s, prefix, without_ticket=without_ticket, kind=kind) or ["none"])
    )


@messages.command("show")
@click.argument("mid", type=int)
@pass_ctx
def messages_show(ctx: Context, mid: int) -> None:
    """Stored mail MID with every decision mailgate took on it."""
    from mailgate import views

    def show(session: Any) -> None:
        lines = views.message_detail(session, mid)
        if lines is None:
            _fail(f"there is no stored message {mid}")
        _print(lines)

    _with_session(ctx, show)


# -- spool ------------------------------------------------------------------------------------


@cli.group()
def spool() -> None:
    """Mail the SMTP listener accepted that ingest() has not taken yet."""


@spool.command("list")
@pass_ctx
def spool_list(ctx: Context) -> None:
    """What waits in the spool, oldest first; a failing mail shows its attempts and last error."""
    from mailgate.spool import Spool, spool_dir

    waiting = Spool(spool_dir(ctx.data_dir)).waiting()
    _print([_spool_line(entry) for entry in waiting[:SPOOL_LIST_LINES]] or ["spool is empty"])
    if len(waiting) > SPOOL_LIST_LINES:
        click.echo(f"… {len(waiting)} in all")


def _spool_line(entry: Waiting) -> str:
    envelope = entry.envelope
    if envelope is None:
        line = f"{entry.name}  (no readable envelope: goes to quarantine when it is tried)"
    else:
        sender = "?" if envelope.sender is None else envelope.sender
        line = (
            f"{entry.name}  received {envelope.received_at:%Y-%m-%d %H:%M:%S %Z}  via {envelope.source}  "
            f"<{sender}> -> {', '.join(envelope.recipients) or '?'}"
        )
    if entry.claimed:
        line += "  (being ingested)"
    if entry.attempts:
        due = f", next {entry.due:%H:%M:%S %Z}" if entry.due else ""
        error = entry.last_error.splitlines()[0] if entry.last_error else ""
        line += f"  attempts {entry.attempts}{due}" + (f": {error}" if error else "")
    return line


# -- quarantine -------------------------------------------------------------------------------


@cli.group()
def quarantine() -> None:
    """Mail that could not be parsed."""


@quarantine.command("list")
@pass_ctx
def quarantine_list(ctx: Context) -> None:
    from mailgate import views

    _with_session(ctx, lambda s: _print(views.quarantine_list(s) or ["quarantine is empty"]))


@quarantine.command("show")
@click.argument("qid", type=int)
@pass_ctx
def quarantine_show(ctx: Context, qid: int) -> None:
    """The reason and the raw bytes of quarantined mail QID."""
    from mailgate.models import Quarantine

    def show(session: Any) -> None:
        row = session.get(Quarantine, qid)
        if row is None:
            _fail(f"there is no quarantined mail {qid}")
        click.echo(f"reason: {row.reason}\nsource: {row.source}\nreceived: {row.received_at}\n")
        sys.stdout.buffer.write(row.raw)

    _with_session(ctx, show)


@quarantine.command("retry")
@click.argument("qid", type=int)
@pass_ctx
def quarantine_retry(ctx: Context, qid: int) -> None:
    """Run quarantined mail QID through ingest again (after a fix)."""
    from mailgate import quarantine

    app = ctx.app()
    try:
        released_as = quarantine.retry(app, qid)
    except quarantine.NotRetried as exc:
        _fail(str(exc))
    except quarantine.StillQuarantined as exc:
        _fail(f"still unparseable: {exc}", EX_DATAERR)
    except quarantine.TemporaryFailure as exc:
        _fail(f"temporary failure, still quarantined: {exc}", EX_TEMPFAIL)
    finally:
        app.close()
    click.echo(f"released: {released_as}")


# -- outbox -----------------------------------------------------------------------------------


@cli.group()
def outbox() -> None:
    """Queued outgoing mail."""


@outbox.command("list")
@click.option("--state", type=click.Choice(["queued", "sent", "dead"]))
@pass_ctx
def outbox_list(ctx: Context, state: str | None) -> None:
    from mailgate import views

    _with_session(ctx, lambda s: _print(views.outbox_list(s, state) or ["outbox is empty"]))


@outbox.command("flush")
@pass_ctx
def outbox_flush(ctx: Context) -> None:
    """Deliver queued mail now: to the relay, or to the local Maildir when no relay is set."""
    from mailgate.outgoing.outbox import deliver_due
    from mailgate.outgoing.sender import transport_for

    app = ctx.app()
    settings = app.settings
    transport = transport_for(settings.outgoing, settings.outgoing_maildir)
    try:
        with app.sessions() as session:
            report = deliver_due(session, transport, app.clock.now(), settings.outgoing.max_attempts, limit=10_000)
    finally:
        transport.close()
    where = f"relay {settings.outgoing.relay_host}" if settings.outgoing.relay_host else settings.outgoing_maildir
    click.echo(f"sent {report.sent}, will retry {report.retried}, dead {report.dead} (to {where})")


# -- helpers ----------------------------------------------------------------------------------


def _print(lines: list[str]) -> None:
    click.echo("\n".join(lines))


def _with_session(ctx: Context, action: Callable[[Any], None]) -> None:
    app = ctx.app()
    try:
        # A reader: `mailgate tickets list | less` may hold it open for as long as it likes.
        with app.read_sessions() as session:
            action(session)
    finally:
        app.close()


def main() -> None:
    cli()
