"""SLA pauses and firings: what the clock needs while a ticket waits on its requester
(pending_since, pending_until, the pauses so far), the instants a warning is due, whether a
ticket is imported history (which never escalates), and sla_firings, one row per notification
or action a scan took, unique per (ticket, kind, level, deadline) so each happens once.

Revision ID: 0014
Revises: 0015
Create Date: 2026-12-03 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailgate.models

revision: str = "0014"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHEN = mailgate.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("pending_since", WHEN, nullable=True))
        batch.add_column(sa.Column("pending_until", WHEN, nullable=True))
        batch.add_column(sa.Column("pauses", sa.JSON(), server_default="[]", nullable=False))
        batch.add_column(sa.Column("first_response_warn_at", WHEN, nullable=True))
        batch.add_column(sa.Column("resolution_warn_at", WHEN, nullable=True))
        batch.add_column(sa.Column("imported", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("first_response_stage", sa.SmallInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("resolution_stage", sa.SmallInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("idle_reminded", sa.Boolean(), server_default=sa.false(), nullable=False))
    # Tickets answered before: their first-response deadline is met (models.SlaStage.MET).
    op.execute("UPDATE tickets SET first_response_stage = 9 WHERE first_response_at IS NOT NULL")
    for target in ("first_response", "resolution"):
        for column in ("warn_at", "due"):
            op.create_index(
                f"ix_tickets_status_{target}_stage_{column}",
                "tickets",
                ["status", f"{target}_stage", f"{target}_{column}"],
            )
    op.create_index(
        "ix_tickets_status_idle_reminded_last_activity_at", "tickets", ["status", "idle_reminded", "last_activity_at"]
    )
    op.create_index("ix_tickets_status_created_at", "tickets", ["status", "created_at"])
    op.create_index("ix_tickets_status_resolved_at", "tickets", ["status", "resolved_at"])
    op.create_index("ix_tickets_status_pending_since", "tickets", ["status", "pending_since"])
    op.create_table(
        "sla_firings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("deadline", WHEN, nullable=False),
        sa.Column("fired_at", WHEN, nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_sla_firings_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_firings")),
        sa.UniqueConstraint("ticket_id", "kind", "level", "deadline", name=op.f("uq_sla_firings_ticket_id")),
    )


def downgrade() -> None:
    op.drop_table("sla_firings")
    for name in (
        "ix_tickets_status_pending_since",
        "ix_tickets_status_resolved_at",
        "ix_tickets_status_created_at",
        "ix_tickets_status_idle_reminded_last_activity_at",
        "ix_tickets_status_resolution_stage_due",
        "ix_tickets_status_resolution_stage_warn_at",
        "ix_tickets_status_first_response_stage_due",
        "ix_tickets_status_first_response_stage_warn_at",
    ):
        op.drop_index(name, table_name="tickets")
    with op.batch_alter_table("tickets") as batch:
        for column in (
            "idle_reminded",
            "resolution_stage",
            "first_response_stage",
            "imported",
            "resolution_warn_at",
            "first_response_warn_at",
            "pauses",
            "pending_until",
            "pending_since",
        ):
            batch.drop_column(column)
