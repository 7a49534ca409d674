"""The dispatcher desk's reply commands: messages.internal (#note) and tickets.merged_into_id
(#merge N: later mail follows to N). tickets.pending_until (#pending until) came with 0014.

Revision ID: 0012
Revises: 0014
Create Date: 2026-12-03 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("internal", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("merged_into_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_tickets_merged_into_id_tickets", "tickets", ["merged_into_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_constraint("fk_tickets_merged_into_id_tickets", type_="foreignkey")
        batch.drop_column("merged_into_id")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("internal")
