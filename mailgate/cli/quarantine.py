"""`mailgate quarantine list|show|retry`: mail that could not be parsed or stored."""

from __future__ import annotations

import sys
from typing import Any

import click

from mailgate.cli import EX_DATAERR, EX_TEMPFAIL, Context, fail, printable
from mailgate.cli.root import pass_ctx, print_lines, with_session


@click.group()
def quarantine() -> None:
    """Mail that could not be parsed."""


@quarantine.command("list")
@pass_ctx
def quarantine_list(ctx: Context) -> None:
    from mailgate import views

    with_session(ctx, lambda s: print_lines(views.quarantine_list(s) or ["quarantine is empty"]))


@quarantine.command("show")
@click.argument("qid", type=int)
@pass_ctx
def quarantine_show(ctx: Context, qid: int) -> None:
    """The reason and the raw bytes of quarantined mail QID."""
    from mailgate.models import Quarantine

    def show(session: Any) -> None:
        row = session.get(Quarantine, qid)
        if row is None:
            fail(f"there is no quarantined mail {qid}")
        click.echo(printable(f"reason: {row.reason}\nsource: {row.source}\nreceived: {row.received_at}\n"))
        sys.stdout.buffer.write(row.raw)

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
