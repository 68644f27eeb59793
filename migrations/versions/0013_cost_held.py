"""generations.cost_held: money held against the daily cap while paying

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

Jobs that started paying at the same moment each checked the daily cap
against a spend that did not yet count the others, and all paid. A stage now
holds its estimate (under the user's row lock) before its first paid call,
and the cap counts what is held as well as what was spent.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "generations",
        sa.Column("cost_held", sa.Numeric(10, 4), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("generations", "cost_held")
