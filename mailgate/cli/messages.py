"""`mailgate messages list|show`: stored mail, including mail that opened no ticket."""

from __future__ import annotations

from typing import Any

import click

from mailgate.cli import Context, fail
from mailgate.cli.root import EnumChoice, json_option, pass_ctx, print_json, print_lines, with_session


@click.group()
def messages() -> None:
    """Stored mail, including mail that opened no ticket (auto-replies, bounces)."""


@messages.command("list")
@click.option("--no-ticket", "without_ticket", is_flag=True, help="Only mail not attached to any ticket.")
@click.option("--kind", type=EnumChoice("mailgate.models", "MessageKind"), help="Only mail of this kind.")
@json_option
@pass_ctx
def messages_list(ctx: Context, without_ticket: bool, kind: str | None, as_json: bool) -> None:
    """One line per stored mail, with a header; times in the desk's zone (sla.policy.timezone)."""
    from mailgate import views
    from mailgate.sla.policy import timezone

    prefix, zone = ctx.settings.tickets.tag_prefix, timezone(ctx.settings)

    def show(session: Any) -> None:
        rows = views.message_rows(session, prefix, without_ticket=without_ticket, kind=kind, zone=zone)
        if as_json:
            print_json(rows)
        else:
            print_lines(views.message_list(rows, zone) if rows else ["none"])

    with_session(ctx, show)


@messages.command("show")
@click.argument("ref")
@json_option
@pass_ctx
def messages_show(ctx: Context, ref: str, as_json: bool) -> None:
    """Stored mail REF (its number in `messages list`, or its Message-ID as the log prints it)
    with every decision mailgate took on it."""
    from mailgate import views
    from mailgate.sla.policy import timezone

    zone = timezone(ctx.settings)

    def show(session: Any) -> None:
        found = views.find_message(session, ref)
        if found is None:
            fail(f"there is no stored message {ref} (give its number from `messages list` or its Message-ID)")
        detail = views.message_detail(session, found, zone)
        if as_json:
            print_json(detail)
        else:
            print_lines(views.message_lines(detail, zone))

    with_session(ctx, show)
