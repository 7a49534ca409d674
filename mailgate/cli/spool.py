"""`mailgate spool list`: mail accepted and not yet ingested, with attempts and last error."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mailgate.cli import Context
from mailgate.cli.root import pass_ctx, print_lines

if TYPE_CHECKING:
    from mailgate.spool import Waiting

SPOOL_LIST_LINES = 200  # `mailgate spool list` shows the oldest this many, then the total


@click.group()
def spool() -> None:
    """Mail the SMTP listener accepted that ingest() has not taken yet."""


@spool.command("list")
@pass_ctx
def spool_list(ctx: Context) -> None:
    """What waits in the spool, oldest first; a failing mail shows its attempts and last error."""
    from mailgate.spool import Spool, spool_dir

    waiting = Spool(spool_dir(ctx.data_dir)).waiting()
    print_lines([_spool_line(entry) for entry in waiting[:SPOOL_LIST_LINES]] or ["spool is empty"])
    if len(waiting) > SPOOL_LIST_LINES:
        click.echo(f"… {len(waiting)} in all")


def _spool_line(entry: Waiting) -> str:
    envelope = entry.envelope
    if envelope is None:
        line = f"{entry.name}  (no readable envelope: goes to quarantine when it is tried)"
    else:
        sender = "?" if envelope.sender is None else envelope.sender
        line = (
            f"{entry.name}  received {envelope.received_at:%Y-%m-%d %H:%M:%S %Z}  via {envelope.source}  "
            f"<{sender}> -> {', '.join(envelope.recipients) or '?'}"
        )
    if entry.claimed:
        line += "  (being ingested)"
    if entry.attempts:
        due = f", next {entry.due:%H:%M:%S %Z}" if entry.due else ""
        error = entry.last_error.splitlines()[0] if entry.last_error else ""
        line += f"  attempts {entry.attempts}{due}" + (f": {error}" if error else "")
    return line
