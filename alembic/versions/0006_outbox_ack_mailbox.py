"""outbox.rcpt_key holds the mailbox the recipient reaches (case and +suffix folded), so the
acknowledgement limit counts victim+1@ … victim+20@ as one; rows written before are folded too.
outbox.rcpt_proven: the answered mail was proven (DMARC) to come from its recipient.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02 15:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

outbox = sa.table("outbox", sa.column("id", sa.Integer), sa.column("rcpt_key", sa.String(320)))


def _fold(address: str) -> str:
    # mailgate.addresses.fold_address as of this revision: a migration must not change when it does.
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    base = local.partition("+")[0] or local
    return f"{base}@{domain.rstrip('.')}"


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rcpt_proven", sa.Boolean(), server_default=sa.false(), nullable=False))
    # Only keys that fold to something else: a '+' or a capital (rare), not the whole table.
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(outbox.c.id, outbox.c.rcpt_key).where(
            sa.or_(outbox.c.rcpt_key.like("%+%"), outbox.c.rcpt_key != sa.func.lower(outbox.c.rcpt_key))
        )
    ).all()
    for row_id, key in rows:
        if _fold(key) != key:
            conn.execute(outbox.update().where(outbox.c.id == row_id).values(rcpt_key=_fold(key)))


def downgrade() -> None:
    # The folded keys stay: the exact addresses are in outbox.recipients, and older code
    # counts folded keys as it counted exact ones.
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("rcpt_proven")
