"""`mailgate messages list|show`: stored mail, including mail that opened no ticket."""

from __future__ import annotations

from typing import Any

import click

from mailgate.cli import Context, fail
from mailgate.cli.root import EnumChoice, pass_ctx, print_lines, with_session


@click.group()
def messages() -> None:
    """Stored mail, including mail that opened no ticket (auto-replies, bounces)."""


@messages.command("list")
@click.option("--no-ticket", "without_ticket", is_flag=True, help="Only mail not attached to any ticket.")
@click.option("--kind", type=EnumChoice("mailgate.models", "MessageKind"))
@pass_ctx
def messages_list(ctx: Context, without_ticket: bool, kind: str | None) -> None:
    from mailgate import views

    prefix = ctx.settings.tickets.tag_prefix
    with_session(
        ctx, lambda s: print_lines(views.message_list(s, prefix, without_ticket=without_ticket, kind=kind) or ["none"])
    )


@messages.command("show")
@click.argument("mid", type=int)
@pass_ctx
def messages_show(ctx: Context, mid: int) -> None:
    """Stored mail MID with every decision mailgate took on it."""
    from mailgate import views

    def show(session: Any) -> None:
        lines = views.message_detail(session, mid)
        if lines is None:
            fail(f"there is no stored message {mid}")
        print_lines(lines)

    with_session(ctx, show)
