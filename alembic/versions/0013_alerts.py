"""tickets.alert_key: the alert (an alert source's name and its subject without the state
words) a ticket was opened for; a repeat of the alert goes on the open ticket of its key.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-03 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("alert_key", sa.String(300), nullable=True))
        batch.create_index("ix_tickets_alert_key", ["alert_key"])


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_index("ix_tickets_alert_key")
        batch.drop_column("alert_key")
