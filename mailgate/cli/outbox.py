"""`mailgate outbox list|flush`: queued outgoing mail; deliver it now."""

from __future__ import annotations

from typing import Any

import click

from mailgate.cli import Context
from mailgate.cli.root import pass_ctx, print_lines, with_session


@click.group()
def outbox() -> None:
    """Queued outgoing mail."""


@outbox.command("list")
@click.option("--state", type=click.Choice(["queued", "sent", "dead"]), help="Only mail in this state.")
@pass_ctx
def outbox_list(ctx: Context, state: str | None) -> None:
    """One line per outgoing mail: its state, kind, recipients and subject."""
    from mailgate import views

    def show(session: Any) -> None:
        lines = views.outbox_list(session, state)
        if not lines:
            counts = views.outbox_counts(session)
            held = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing at all"
            lines = [f"no {state} mail in the outbox (it holds {held})" if state else "outbox is empty"]
        print_lines(lines)

    with_session(ctx, show)


@outbox.command("flush")
@pass_ctx
def outbox_flush(ctx: Context) -> None:
    """Deliver queued mail now: to the relay, or to the local Maildir when no relay is set."""
    from mailgate.outgoing.outbox import deliver_due
    from mailgate.outgoing.sender import transport_for

    app = ctx.app()
    settings = app.settings
    transport = transport_for(settings.outgoing, settings.outgoing_maildir)
    try:
        with app.sessions() as session:
            report = deliver_due(
                session, transport, app.clock.now(), settings.outgoing.max_attempts, limit=10_000, store=app.store
            )
    finally:
        transport.close()
    where = f"relay {settings.outgoing.relay_host}" if settings.outgoing.relay_host else settings.outgoing_maildir
    click.echo(f"sent {report.sent}, will retry {report.retried}, dead {report.dead} (to {where})")
