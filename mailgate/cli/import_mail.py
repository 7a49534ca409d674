"""`mailgate import mbox|maildir`: a whole mailbox through ingest(), with a summary."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mailgate.cli import EX_CONFIG, EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_USAGE, Context, fail, printable, schema_hint
from mailgate.cli.root import pass_ctx

if TYPE_CHECKING:
    import mailbox


@click.command("import")
@click.argument("kind", type=click.Choice(["mbox", "maildir"]))
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--notify",
    is_flag=True,
    help="Treat the mail as new: acknowledge senders and notify the dispatcher (default: history, no mail).",
)
@click.option("--closed", is_flag=True, help="Close the tickets the import opens (an archive of finished work).")
@pass_ctx
def import_cmd(ctx: Context, kind: str, path: Path, notify: bool, closed: bool) -> None:
    """Ingest every mail of an mbox file or a Maildir folder, oldest first, with a summary.

    By default the mail is history: each ticket is dated by when its mail was written (Date,
    checked against Received), and nobody is mailed. --notify imports it as new mail instead."""
    from mailgate.ingest.history import History
    from mailgate.ingest.pipeline import Outcome, TemporaryFailure, ingest

    if notify and closed:
        fail("--notify and --closed contradict each other: closed tickets are not announced", EX_USAGE)
    history = None if notify else History(close=closed)

    app = ctx.app()
    source = f"import:{path.name}"
    counts: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    box = _open_box(kind, path)
    try:
        total = len(box)
        if total == 0:
            fail(
                f"{path} holds no mail as {kind} (is it a{'n mbox file' if kind == 'mbox' else ' Maildir'}?)",
                EX_DATAERR,
            )
        with click.progressbar(_mails(box), length=total, label=f"importing {path.name}", file=sys.stderr) as bar:
            for raw in bar:
                try:
                    counts[ingest(app, raw, source, history=history).outcome] += 1
                except TemporaryFailure as exc:
                    reason = schema_hint(str(exc))
                    if reason != str(exc):  # every other mail would fail the same way
                        fail(f"nothing imported: {reason}", EX_CONFIG)
                    counts["failed"] += 1
                    failures[reason] += 1
                    if failures[reason] == 1:  # each reason once, with its count in the summary
                        click.echo(printable(f"\ntemporary failure: {reason}"), err=True)
    finally:
        box.close()  # an mbox holds its file open (and locked) until then
    labels = [
        (Outcome.NEW_TICKET, "new tickets"),
        (Outcome.REPLY, "replies"),
        (Outcome.DUPLICATE, "duplicates"),
        (Outcome.AUTO, "auto-generated"),
        (Outcome.BOUNCE, "bounces"),
        (Outcome.HELD, "held (circuit breaker)"),
        (Outcome.QUARANTINED, "quarantined"),
        ("failed", "failed (not stored)"),
    ]
    # Held mail only when there is some: an import of history rarely meets the breaker.
    shown = [(k, label) for k, label in labels if k != Outcome.HELD or counts[k]]
    click.echo(f"{total} mails: " + ", ".join(f"{counts[k]} {label}" for k, label in shown))
    if history is None:
        click.echo("imported as new mail: senders acknowledged and the dispatcher notified (--notify)")
    else:
        closed_note = ", new tickets closed" if history.close else ""
        click.echo(f"imported as history: dated by when written, no acknowledgements, no notices{closed_note}")
    for reason, n in failures.items():
        click.echo(printable(f"  {n} not stored: {reason} (run the import again to retry them)"), err=True)
    app.close()
    sys.exit(EX_TEMPFAIL if counts["failed"] else EX_OK)


def _open_box(kind: str, path: Path) -> mailbox.Mailbox[Any]:
    import mailbox

    if kind == "mbox":
        if not path.is_file():
            fail(f"{path} is not a file; an mbox is one file (use `import maildir` for a folder)", EX_DATAERR)
        return mailbox.mbox(path, create=False)
    if not (path / "cur").is_dir() and not (path / "new").is_dir():
        fail(f"{path} is not a Maildir (it has no cur/ or new/ folder)", EX_DATAERR)
    return mailbox.Maildir(path, create=False)


def _mails(box: mailbox.Mailbox[Any]) -> Iterator[bytes]:
    """Every mail of the box, oldest first: a reply imported before its request would open a
    ticket of its own. Only the headers are read to sort; one mail at a time is in memory."""
    for key in sorted(box.iterkeys(), key=lambda k: _written(box, k)):
        yield _bytes(box, key)


def _bytes(box: mailbox.Mailbox[Any], key: str) -> bytes:
    import mailbox

    data = box.get_bytes(key)
    if isinstance(box, mailbox.mbox) and data.startswith(b"From "):
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""  # the mbox separator line
    return data


def _written(box: mailbox.Mailbox[Any], key: str) -> float:
    """The mail's Date as a timestamp, for sorting (0 when it has none: first, in box order)."""
    import email.utils

    head = _bytes(box, key).split(b"\n\n", 1)[0].replace(b"\r", b"")
    for line in head.split(b"\n"):
        if line[:5].lower() == b"date:":
            try:
                return email.utils.parsedate_to_datetime(line[5:].decode("latin-1").strip()).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                return 0.0
    return 0.0
