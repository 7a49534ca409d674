"""reply_token_generations: the current generation of a person's reply token for a ticket, a row
only once a staff member's token was shown to others and replaced (mailgate/exposure.py). No
row is generation 0, so every token issued before stays valid.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 13:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailgate.models

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reply_token_generations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("replaced_at", mailgate.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_reply_token_generations_ticket_id_tickets")
        ),
        sa.ForeignKeyConstraint(["person_id"], ["people.id"], name=op.f("fk_reply_token_generations_person_id_people")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reply_token_generations")),
        sa.UniqueConstraint("ticket_id", "person_id", name=op.f("uq_reply_token_generations_ticket_id")),
    )


def downgrade() -> None:
    op.drop_table("reply_token_generations")
