"""`mailgate tickets list|show`: tickets as a person reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click

from mailgate.cli import Context, fail
from mailgate.cli.root import (
    Duration,
    EnumChoice,
    TicketNumber,
    json_option,
    pass_ctx,
    print_json,
    print_lines,
    with_session,
)
from mailgate.cli.sla import as_of, at_option


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
@click.option("--assignee", default="", help="Only tickets assigned to this address or name; `none`: unassigned.")
@click.option("--team", default="", help="Only tickets of this team.")
@click.option("--older-than", type=Duration(), default=None, help="Only tickets opened longer ago than this (3d, 12h).")
@json_option
@pass_ctx
def tickets_list(
    ctx: Context, statuses: tuple[str, ...], assignee: str, team: str, older_than: timedelta | None, as_json: bool
) -> None:
    """One line per ticket, with a header; times in the desk's zone (sla.policy.timezone)."""
    from mailgate import views
    from mailgate.sla.policy import timezone

    zone = timezone(ctx.settings)

    # The command line runs on the wall clock: "older than 3d" means three days before now.
    opened_before = datetime.now(UTC) - older_than if older_than is not None else None

    def show(session: Any) -> None:
        only = views.TicketFilter(statuses, assignee, team, opened_before)
        rows = views.ticket_rows(session, ctx.settings.tickets.tag_prefix, only, zone)
        if as_json:
            print_json(rows)
        else:
            print_lines(views.ticket_list(rows, zone) if rows else ["no tickets"])

    with_session(ctx, show)


@tickets.command("show")
@click.argument("number", type=TicketNumber())
@at_option
@json_option
@pass_ctx
def tickets_show(ctx: Context, number: int, at: datetime | None, as_json: bool) -> None:
    """The whole thread of ticket NUMBER (12, #12, HD#12 or "[HD #12]") as a person reads it,
    with its deadlines as of --at (whether each was met or breached)."""
    from mailgate import views
    from mailgate.sla.policy import timezone

    now = as_of(ctx, at)

    def show(session: Any) -> None:
        detail = views.ticket_detail(session, ctx.settings.tickets.tag_prefix, number, timezone(ctx.settings), now)
        if detail is None:
            fail(f"there is no ticket #{number}")
        if as_json:
            print_json(detail)
        else:
            print_lines(views.ticket_thread(detail))

    with_session(ctx, show)
