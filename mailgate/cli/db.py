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
    before, after = upgrade(url)
    where = _redact(url)
    if before is None:
        click.echo(f"created the database schema at revision {after} ({where})")
    elif before != after:
        click.echo(f"migrated the database schema from revision {before} to {after} ({where})")
    else:
        click.echo(f"the database schema is already at the newest revision, {after}: nothing to do ({where})")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
