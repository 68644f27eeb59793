"""maintenance state: where the storage sweep is, and what it removed

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

One row per periodic job that walks something in pages (the storage sweep):
the key it stopped after, and how many items it has removed in all (the
``bff_storage_orphans_removed_total`` metric).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenance_state",
        sa.Column("name", sa.String(length=40), primary_key=True),
        sa.Column("position", sa.Text(), nullable=True),
        sa.Column("removed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("maintenance_state")
