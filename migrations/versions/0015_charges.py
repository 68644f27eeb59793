"""charges: a ledger of what stages paid

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Today's spend was summed from today's generations, so the daily cap missed a
refine of an older generation (its cost went onto that generation) and gave
back the spend of a generation deleted today. Each payment is now a row of its
own, dated when it was paid and kept when its generation is deleted. Existing
costs are carried over, dated with their generations.
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

HOLDING = "cost_held > 0"


def upgrade() -> None:
    op.create_table(
        "charges",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("generation_id", sa.String(40), nullable=False),
        sa.Column("payment", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(40), nullable=False),
        sa.Column("what", sa.String(20), nullable=False),
        sa.Column("amount", sa.Numeric(10, 4), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("generation_id", "payment", name="uq_charges_payment"),
    )
    op.create_index("ix_charges_user_created", "charges", ["user_id", "created_at"])
    op.execute(
        "INSERT INTO charges (user_id, generation_id, payment, provider, what, amount,"
        " created_at) SELECT user_id, id, 'before the ledger', COALESCE(provider, 'unknown'),"
        " 'generate', cost, created_at FROM generations WHERE cost > 0"
    )
    op.create_index(
        "ix_generations_holding",
        "generations",
        ["user_id"],
        postgresql_where=sa.text(HOLDING),
        sqlite_where=sa.text(HOLDING),
    )


def downgrade() -> None:
    op.drop_index("ix_generations_holding", table_name="generations")
    op.drop_table("charges")
