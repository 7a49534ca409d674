"""`mailgate run` (the daemon) and `mailgate check-config` (what the daemon would find)."""

from __future__ import annotations

import sys

import click

from mailgate.cli import Context
from mailgate.cli.root import pass_ctx


@click.command("run")
@pass_ctx
def run_cmd(ctx: Context) -> None:
    """Run the daemon: SMTP listener, IMAP pollers, outbox sender and scheduler."""
    import logging

    from mailgate.daemon import run

    app = ctx.app()
    if not ctx.verbose:  # -v logs everything; else log.level (default info: a line per event)
        logging.getLogger("mailgate").setLevel(app.settings.log.level.upper())
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: a line per SMTP command
    try:
        run(app)
    finally:
        app.close()


@click.command("check-config")
@pass_ctx
def check_config_cmd(ctx: Context) -> None:
    """Check the configuration: the database, each IMAP mailbox and the relay, one line each."""
    from mailgate.checks import run_checks
    from mailgate.config import unknown_variables

    results = run_checks(ctx.settings)
    for line in unknown_variables():
        click.echo(f"WARN {line}")
    for name, problem in results:
        click.echo(f"{'OK  ' if problem is None else 'FAIL'} {name}{'' if problem is None else ': ' + problem}")
    sys.exit(0 if all(problem is None for _, problem in results) else 1)
