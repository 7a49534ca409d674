"""`mailgate limits list|lift`: sources of mail the circuit breaker holds, and ending a hold."""

from __future__ import annotations

import getpass
from typing import Any

import click

from mailgate.cli import Context, fail
from mailgate.cli.root import pass_ctx, print_lines


@click.group()
def limits() -> None:
    """Sources of mail held by the circuit breaker (a robot or a loop opening ticket after ticket)."""


@limits.command("list")
@pass_ctx
def limits_list(ctx: Context) -> None:
    """Every source whose mail the circuit breaker holds now: since when, until when, how much."""
    from mailgate.ingest.breaker import trips_in_force

    app = ctx.app()

    def show(session: Any) -> None:
        from mailgate.models import Ticket

        prefix = app.settings.tickets.tag_prefix
        lines = []
        for trip in trips_in_force(session, app.clock.now()):
            ticket = session.get(Ticket, trip.ticket_id) if trip.ticket_id else None
            on = f" on {prefix} #{ticket.number}" if ticket else ""
            lines.append(
                f"{trip.source:<40} over {trip.limit}, since {trip.tripped_at:%Y-%m-%d %H:%M}, "
                f"{trip.held} held{on}, until {trip.until:%Y-%m-%d %H:%M} unless more arrives"
            )
        print_lines(lines or ["no mail is held"])

    try:
        with app.read_sessions() as session:
            show(session)
    finally:
        app.close()


@limits.command("lift")
@click.argument("source")
@pass_ctx
def limits_lift(ctx: Context, source: str) -> None:
    """End the hold on SOURCE (as `limits list` shows it, or an address or a domain): its next
    mail opens a ticket again and it may open as many as the limit allows before the next hold."""
    from mailgate.ingest.breaker import keys_for, lift

    app = ctx.app()
    try:
        with app.sessions() as session, session.begin():
            lifted = lift(session, source, app.clock.now(), f"cli:{getpass.getuser()}")
            names = [trip.source for trip in lifted]
    finally:
        app.close()
    if not names:
        fail(f"no mail is held from {' or '.join(keys_for(source))} (see `mailgate limits list`)")
    print_lines([f"lifted {name}" for name in names])
