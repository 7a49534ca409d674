"""`mailgate db upgrade`: the only way the schema is made."""

from __future__ import annotations

import click

from mailgate.cli import Context
from mailgate.cli.root import pass_ctx


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the database schema to the newest version."""
    from mailgate.db import upgrade

    url = ctx.settings.effective_database_url
    upgrade(url)
    click.echo(f"database schema is up to date ({_redact(url)})")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
