"""provider outcomes: the rolling window behind routing's circuit breaker

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

One row per ``generate`` outcome (success or failure) per provider. Routing
reads the recent window for success rates and opens a provider's circuit
when its failure rate is over the threshold; old rows are pruned as new
ones arrive.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_outcomes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.String(length=40), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("provider_outcomes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_provider_outcomes_provider_created", ["provider_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("provider_outcomes", schema=None) as batch_op:
        batch_op.drop_index("ix_provider_outcomes_provider_created")
    op.drop_table("provider_outcomes")
