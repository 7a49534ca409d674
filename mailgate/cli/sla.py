"""`mailgate sla scan|show|check`: run the SLA scans once, explain a ticket's deadlines, list
the tickets at risk and in breach."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from mailgate.cli import Context, fail
from mailgate.cli.root import TicketNumber, pass_ctx, print_lines, with_session


class When(click.ParamType):
    """An ISO 8601 time, `2026-11-30T09:00` (in the [sla] time zone) or with its offset."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r}: expected a time like 2026-11-30T09:00 or 2026-11-30T09:00+01:00", param, ctx)


def as_of(ctx: Context, at: datetime | None) -> datetime:
    from datetime import UTC

    from mailgate.sla.policy import timezone

    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone(ctx.settings))
    return at.astimezone(UTC)


at_option = click.option(
    "--at", type=When(), default=None, help="As of this time (ISO 8601; no offset: the [sla] time zone). Default: now."
)


@click.group()
def sla() -> None:
    """Service levels: deadlines, warnings, escalations, reminders."""


@sla.command("scan")
@at_option
@click.option("--dry-run", is_flag=True, help="Show what would fire, and record and send nothing.")
@pass_ctx
def sla_scan(ctx: Context, at: datetime | None, dry_run: bool) -> None:
    """Run every SLA scan once, as the daemon does every sla.scan_interval_seconds."""
    from mailgate.sla import scans

    now = as_of(ctx, at)
    app = ctx.app()
    try:
        with app.sessions() as session:
            counts = scans.run_all(session, app.settings, now)
            if dry_run:
                session.rollback()
            else:
                session.commit()
    finally:
        app.close()
    done = ", ".join(f"{name} {count}" for name, count in counts.items())
    click.echo(f"{'would fire' if dry_run else 'fired'} as of {now:%Y-%m-%d %H:%M} UTC: {done}")


@sla.command("show")
@click.argument("number", type=TicketNumber())
@at_option
@pass_ctx
def sla_show(ctx: Context, number: int, at: datetime | None) -> None:
    """Ticket NUMBER's targets, deadlines, pauses and what has fired."""
    from mailgate.sla import report

    now = as_of(ctx, at)

    def show(session: Any) -> None:
        lines = report.show(session, ctx.settings, number, now)
        if lines is None:
            fail(f"there is no ticket #{number}")
        print_lines(lines)

    with_session(ctx, show)


@sla.command("check")
@at_option
@click.option(
    "--limit", type=click.IntRange(1, 100_000), default=100, show_default=True, help="At most this many of each list."
)
@pass_ctx
def sla_check(ctx: Context, at: datetime | None, limit: int) -> None:
    """Open tickets in breach of a target, and those at risk (past the warning share)."""
    from mailgate.sla import report

    now = as_of(ctx, at)
    with_session(ctx, lambda session: print_lines(report.check(session, ctx.settings, now, limit)))
