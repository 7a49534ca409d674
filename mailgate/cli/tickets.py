"""`mailgate tickets list|show`: tickets as a person reads them."""

from __future__ import annotations

from typing import Any

import click

from mailgate.cli import Context, fail
from mailgate.cli.root import EnumChoice, pass_ctx, print_lines, with_session


@click.group()
def tickets() -> None:
    """Look at tickets."""


@tickets.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=EnumChoice("mailgate.models", "Status"),
    help="Only tickets with this status (repeatable).",
)
@pass_ctx
def tickets_list(ctx: Context, statuses: tuple[str, ...]) -> None:
    """One line per ticket."""
    from mailgate import views

    with_session(
        ctx, lambda s: print_lines(views.ticket_list(s, ctx.settings.tickets.tag_prefix, statuses) or ["no tickets"])
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
            fail(f"there is no ticket #{number}")
        print_lines(lines)

    with_session(ctx, show)
