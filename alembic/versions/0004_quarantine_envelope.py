"""quarantined mail keeps its envelope (MAIL FROM, RCPT TO), so a retry threads like the original

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:58:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.add_column(sa.Column("envelope_sender", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("envelope_recipients", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_column("envelope_recipients")
        batch_op.drop_column("envelope_sender")
