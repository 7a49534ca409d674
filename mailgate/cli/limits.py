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
    from mailgate.ingest.breaker import exemptions, trips_in_force

    app = ctx.app()

    def show(session: Any) -> None:
        from mailgate.models import Ticket

        prefix = app.settings.tickets.tag_prefix
        lines = []
        for trip in trips_in_force(session, app.clock.now()):
            ticket = session.get(Ticket, trip.ticket_id) if trip.ticket_id else None
            on = f" on {prefix} #{ticket.number}" if ticket else ""
            lifted = exemptions(session, trip) if trip.source.startswith("domain:") else []
            but = f"; lifted for (not held): {', '.join(lifted)}" if lifted else ""
            lines.append(
                f"{trip.source:<40} over {trip.limit}, since {trip.tripped_at:%Y-%m-%d %H:%M}, "
                f"{trip.held} held{on}, until {trip.until:%Y-%m-%d %H:%M} unless more arrives{but}"
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
    mail opens a ticket again and it may open as many as the limit allows before the next hold.

    For an address whose domain is held (a robot mailing from many addresses of it), the address
    is let through its domain's hold and the domain's other senders stay held: the admin vouched
    for one person, not for the robot. `lift domain:…` ends the domain's hold for all."""
    from mailgate.ingest.breaker import exempt_from_domain, keys_for, lift

    app = ctx.app()
    now, by = app.clock.now(), f"cli:{getpass.getuser()}"
    # An address, as such or as a key ("sender:…", "address:…"): its domain may hold it too.
    kind, _, rest = source.strip().lower().rpartition(":")
    address = rest if "@" in rest and kind in ("", "sender", "address") else ""
    lines: list[str] = []
    try:
        with app.sessions() as session, session.begin():
            lines = [f"lifted {trip.source}" for trip in lift(session, source, now, by)]
            domain, exempted = exempt_from_domain(session, address, now, by) if address else (None, False)
    finally:
        app.close()
    if domain is not None and exempted:
        lines.append(
            f"lifted {domain.source} for {address} (and its +variants) only: the domain's other senders "
            f"stay held; `mailgate limits lift {domain.source}` lifts them all"
        )
    if not lines:
        already = (
            f"; {domain.source} is held, but was already lifted for it (`mailgate limits lift "
            f"{domain.source}` lifts it for all its senders)"
            if domain is not None
            else ""
        )
        fail(f"no mail is held from {' or '.join(keys_for(source))}{already} (see `mailgate limits list`)")
    print_lines(lines)
