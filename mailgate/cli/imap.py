"""`mailgate imap poll`: read the configured mailboxes once, as the daemon would."""

from __future__ import annotations

import sys

import click

from mailgate.cli import EX_OK, EX_TEMPFAIL, Context, fail, printable
from mailgate.cli.root import pass_ctx


@click.group()
def imap() -> None:
    """The IMAP mailboxes of the config."""


@imap.command("poll")
@click.argument("names", nargs=-1)
@pass_ctx
def imap_poll(ctx: Context, names: tuple[str, ...]) -> None:
    """Read new mail from the mailboxes NAMES (default: all) once, as the daemon would."""
    from mailgate.transports.imap import ImapPoller

    app = ctx.app()
    boxes = [m for m in app.settings.imap if not names or m.name in names]
    unknown = set(names) - {m.name for m in app.settings.imap}
    if unknown or not boxes:
        fail(f"no [[imap]] mailbox named {', '.join(sorted(unknown)) or '(none configured)'} in the config")
    status = EX_OK
    for box in boxes:
        try:
            with ImapPoller(app, box) as poller:
                report = poller.poll_once()
        except Exception as exc:  # the server is down, the password wrong …: say so, go on
            click.echo(printable(f"{box.name}: failed: {type(exc).__name__}: {exc}"), err=True)
            status = EX_TEMPFAIL
            continue
        if report.standby:
            click.echo(f"{box.name}: another daemon holds this mailbox; nothing done")
            continue
        done = ", ".join(f"{n} {k}" for k, n in sorted(report.outcomes.items())) or "no new mail"
        click.echo(f"{box.name}: {done}; {report.failed} failed, {report.to_failure_folder} to the failure folder")
    app.close()
    sys.exit(status)
