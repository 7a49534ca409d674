"""tickets.resolution_due: the resolution deadline of the ticket's SLA targets, beside the
first-response one, computed when it is created or its priority, category or team changes.

Revision ID: 0011
Revises: 0007
Create Date: 2026-12-02 22:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailgate.models

revision: str = "0011"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("resolution_due", mailgate.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("resolution_due")
