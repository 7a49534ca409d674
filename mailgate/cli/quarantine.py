"""`mailgate quarantine list|show|retry`: mail that could not be parsed or stored."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mailgate.cli import EX_DATAERR, EX_TEMPFAIL, EX_USAGE, Context, fail
from mailgate.cli.root import pass_ctx, print_lines, with_session


@click.group()
def quarantine() -> None:
    """Mail that could not be parsed."""


@quarantine.command("list")
@pass_ctx
def quarantine_list(ctx: Context) -> None:
    """One line per quarantined mail, with the reason; times in the desk's zone (sla.policy.timezone)."""
    from mailgate import views
    from mailgate.sla.policy import timezone

    zone = timezone(ctx.settings)
    with_session(ctx, lambda s: print_lines(views.quarantine_list(s, zone) or ["quarantine is empty"]))


@quarantine.command("show")
@click.argument("qid", type=int)
@click.option("--raw", is_flag=True, help="Write the mail's exact bytes to stdout (a pipe or a file, not a terminal).")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write the exact bytes to this file."
)
@pass_ctx
def quarantine_show(ctx: Context, qid: int, raw: bool, output: Path | None) -> None:
    """Why mail QID is in quarantine, its headers and the start of its text."""
    from mailgate import views
    from mailgate.models import Quarantine
    from mailgate.sla.policy import timezone

    if raw and output is None and sys.stdout.isatty():
        fail("refusing to write raw mail to a terminal: pipe it (`| less`) or give --output FILE", EX_USAGE)

    def show(session: Any) -> None:
        row = session.get(Quarantine, qid)
        if row is None:
            fail(f"there is no quarantined mail {qid} (see `mailgate quarantine list`)")
        if output is not None:
            try:
                with open(output, "xb") as out:  # never over a file that is there
                    out.write(row.raw)
            except FileExistsError:
                fail(f"{output} exists: give a new file name", EX_USAGE)
            click.echo(f"wrote {len(row.raw)} bytes to {output}")
        elif raw:
            sys.stdout.buffer.write(row.raw)
        else:
            print_lines(views.quarantine_detail(row, timezone(ctx.settings)))

    with_session(ctx, show)


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
        fail(str(exc))
    except quarantine.StillQuarantined as exc:
        fail(f"still unparseable: {exc}", EX_DATAERR)
    except quarantine.TemporaryFailure as exc:
        fail(f"temporary failure, still quarantined: {exc}", EX_TEMPFAIL)
    finally:
        app.close()
    click.echo(f"released: {released_as}")
