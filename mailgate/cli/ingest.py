"""`mailgate ingest`: what an MTA pipe runs, once per mail. It loads the spool and the config
file's reader only (the standard library), unless --now asks for the whole pipeline."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click

from mailgate.cli import EX_NOINPUT, EX_OK, EX_TEMPFAIL, Context, fail, pass_ctx


@click.command("ingest")
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
    if sender is not None and not sender.isprintable():
        # Control characters or bytes that are not UTF-8 (the listener answers such a MAIL FROM
        # with 553): not an address anyone can answer or store. The MTA has accepted the mail
        # already, so it is kept, its sender taken from its From header instead.
        click.echo(f"ignoring an envelope sender that is not an address: {sender!r}", err=True)
        sender = None
    recipients = tuple(r for r in recipients if r.isprintable())
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
        fail(f"cannot start, mail left with the MTA: {exc}", EX_TEMPFAIL)

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
        fail(f"cannot start, mail left with the MTA: {type(exc).__name__}: {exc}", EX_TEMPFAIL)

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
