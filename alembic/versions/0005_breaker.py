"""the circuit breaker: new tickets counted per source, and the sources over their limit

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailgate.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "breaker_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=330), nullable=False),
        sa.Column("at", mailgate.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breaker_events")),
    )
    op.create_index("ix_breaker_events_source_at", "breaker_events", ["source", "at"], unique=False)
    op.create_table(
        "breaker_trips",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=330), nullable=False),
        sa.Column("limit", sa.String(length=100), nullable=False),
        sa.Column("window_minutes", sa.Integer(), nullable=False),
        sa.Column("tripped_at", mailgate.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("until", mailgate.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=True),
        sa.Column("lifted_at", mailgate.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("lifted_by", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_breaker_trips_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breaker_trips")),
    )
    op.create_index("ix_breaker_trips_source_until", "breaker_trips", ["source", "until"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_breaker_trips_source_until", table_name="breaker_trips")
    op.drop_table("breaker_trips")
    op.drop_index("ix_breaker_events_source_at", table_name="breaker_events")
    op.drop_table("breaker_events")
