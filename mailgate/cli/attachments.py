"""`mailgate attachments list|save`: the files that came with a ticket's mail, and getting them out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailgate.cli import Context, fail
from mailgate.cli.root import TicketNumber, json_option, pass_ctx, print_json, print_lines
from mailgate.ingest.filenames import safe_filename

if TYPE_CHECKING:
    from mailgate.app import App
    from mailgate.models import Attachment, Message


@click.group()
def attachments() -> None:
    """The files attached to a ticket's mail."""


@attachments.command("list")
@click.argument("number", type=TicketNumber())
@json_option
@pass_ctx
def attachments_list(ctx: Context, number: int, as_json: bool) -> None:
    """Every attachment of ticket NUMBER, with the id `attachments save --id` takes."""
    from mailgate import views
    from mailgate.sla.policy import timezone

    with _of_ticket(ctx, number) as (_, found):
        rows = views.attachment_rows(found, timezone(ctx.settings))
    if as_json:
        print_json(rows)
    else:
        print_lines(views.attachment_list(rows) if rows else [f"ticket #{number} has no attachments"])


@attachments.command("save")
@click.argument("number", type=TicketNumber())
@click.option("--id", "ids", type=int, multiple=True, help="Only the attachment with this id (repeatable).")
@click.option(
    "--to",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder to write the files into (created if missing).",
)
@pass_ctx
def attachments_save(ctx: Context, number: int, ids: tuple[int, ...], folder: Path) -> None:
    """Write the attachments of ticket NUMBER into a folder, one file each, never overwriting."""
    with _of_ticket(ctx, number) as (app, found):
        wanted = [a for a, _ in found if not ids or a.id in ids]
        missing = sorted(set(ids) - {a.id for a in wanted})
        if missing:
            listed = ", ".join(map(str, missing))
            fail(f"ticket #{number} has no attachment {listed} (see `mailgate attachments list {number}`)")
        folder.mkdir(parents=True, exist_ok=True)
        for a in wanted:
            if not a.stored:
                click.echo(f"skipped {a.id}: not kept ({a.note})", err=True)
                continue
            # Made safe again: rows stored before names were sanitised at ingest may hold anything.
            path = _free_path(folder, safe_filename(a.filename, a.content_type, a.id))
            with open(path, "xb") as out:
                out.write(app.store.get(a.sha256))
            click.echo(str(path))


@contextmanager
def _of_ticket(ctx: Context, number: int) -> Iterator[tuple[App, list[tuple[Attachment, Message]]]]:
    """The attachments of ticket `number` in a read session (the app stays open for the files)."""
    from mailgate import views

    app = ctx.app()
    try:
        with app.read_sessions() as session:
            found = views.ticket_attachments(session, number)
            if found is None:
                fail(f"there is no ticket #{number}")
            yield app, found
    finally:
        app.close()


def _free_path(folder: Path, name: str) -> Path:
    """`name` in `folder`, or `name (2)` … when a file of that name is there already."""
    path = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 2
    while path.exists():
        path = folder / f"{stem} ({n}){suffix}"
        n += 1
    return path
