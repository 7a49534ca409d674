"""`mailgate ingest`: what an MTA pipe runs, once per mail.

The spool drop loads the spool and the config file's reader only, from the standard library:
its arguments are parsed with argparse, not click, because click's import alone costs more than
writing the mail durably (see bench/pipe.py). `mailgate ingest` reaches `main` straight from the
package's entry point; `mailgate --config F ingest …` reaches `run` through the click group with
the same parser. --now loads the whole pipeline.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from mailgate.cli import EX_NOINPUT, EX_OK, EX_TEMPFAIL, Context, explain, fail, schema_hint

DESCRIPTION = """\
Take mail from FILES (or standard input, '-'): what an MTA pipe runs, once per mail.

The mail is written to the spool, and the running daemon (`mailgate run`) ingests it at once.
Exit status 0 once the mail is on stable storage; 75 (EX_TEMPFAIL) when it cannot be kept for
now, so the MTA keeps it and retries; 66 (EX_NOINPUT) when a FILE cannot be read.

With --now the mail is parsed and stored in this process instead: exit 0 when stored,
duplicate or quarantined, 75 on a temporary failure (the database is down or locked).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mailgate ingest", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("files", nargs="*", type=Path, metavar="FILES")
    p.add_argument("--now", action="store_true", help="Parse and store in this process, for setups without a daemon.")
    p.add_argument(
        "--source", default="pipe", metavar="NAME", help="Where the mail came from, shown in history (default: pipe)."
    )
    p.add_argument(
        "--recipient",
        dest="recipients",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="Envelope recipient; repeatable.",
    )
    p.add_argument(
        "--sender", metavar="ADDRESS", help="Envelope sender (MAIL FROM; '' for a bounce), e.g. Postfix's ${sender}."
    )
    p.add_argument(
        "--config", "-c", type=Path, metavar="FILE", help="Config file (default: mailgate.toml); also before `ingest`."
    )
    p.add_argument("--verbose", "-v", action="store_true", help="Log every step to stderr.")
    return p


def main(argv: Sequence[str]) -> NoReturn:
    """`mailgate ingest ARGS`, straight from the entry point."""
    args = parser().parse_args(argv)
    run_parsed(args, Context(args.config, args.verbose))


def run(argv: Sequence[str], ctx: Context) -> NoReturn:
    """`mailgate [--config F] [-v] ingest ARGS` through the click group: its options are defaults."""
    args = parser().parse_args(argv)
    run_parsed(args, Context(args.config or ctx.config, args.verbose or ctx.verbose))


def run_parsed(args: argparse.Namespace, ctx: Context) -> NoReturn:
    sender: str | None = args.sender
    if sender is not None and not sender.isprintable():
        # Control characters or bytes that are not UTF-8 (the listener answers such a MAIL FROM
        # with 553): not an address anyone can answer or store. The MTA has accepted the mail
        # already, so it is kept, its sender taken from its From header instead.
        print(f"ignoring an envelope sender that is not an address: {sender!r}", file=sys.stderr)
        sender = None
    recipients = tuple(r for r in args.recipients if r.isprintable())
    files = tuple(args.files)
    try:
        if args.now:
            _ingest_now(ctx, files, args.source, recipients, sender)
        _drop_into_spool(ctx, files, args.source, recipients, sender)
    except Exception as exc:  # the last line of defence: one readable line, not a traceback
        fail(*explain(exc))


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
            print(f"{path}: cannot write to the spool {spool.root}, mail left with the MTA: {exc}", file=sys.stderr)
            return EX_TEMPFAIL
        spool.wake_daemon()
        print(f"{path}: spooled as {name}")
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
            # 75 even for a missing schema: the MTA keeps the mail until the admin has run it.
            print(f"{path}: temporary failure, not stored: {schema_hint(str(exc))}", file=sys.stderr)
            return EX_TEMPFAIL
        number = f" {app.settings.tickets.tag_prefix} #{result.ticket_number}" if result.ticket_number else ""
        print(f"{path}: {result.outcome}{number}")
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
            raw = sys.stdin.buffer.read() if stdin else path.read_bytes()
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            # A FILE that is not there is the caller's mistake; the MTA's own pipe failing is not.
            status = max(status, EX_TEMPFAIL if stdin else EX_NOINPUT)
            continue
        status = max(status, keep(path, raw))
    sys.exit(status)
