"""`mailgate import mbox|maildir`: a whole mailbox through ingest(), with a summary."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mailgate.cli import EX_DATAERR, EX_OK, EX_TEMPFAIL, Context, fail, printable
from mailgate.cli.root import pass_ctx

if TYPE_CHECKING:
    import mailbox


@click.command("import")
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
            fail(
                f"{path} holds no mail as {kind} (is it a{'n mbox file' if kind == 'mbox' else ' Maildir'}?)",
                EX_DATAERR,
            )
        with click.progressbar(_mails(box), length=total, label=f"importing {path.name}", file=sys.stderr) as bar:
            for raw in bar:
                try:
                    counts[ingest(app, raw, source).outcome] += 1
                except TemporaryFailure as exc:
                    counts["failed"] += 1
                    click.echo(printable(f"\ntemporary failure (run the import again to retry): {exc}"), err=True)
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
    import mailbox

    for key in box.iterkeys():
        data = box.get_bytes(key)
        if isinstance(box, mailbox.mbox) and data.startswith(b"From "):
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""  # the mbox separator line
        yield data
