"""an index of open refine stages

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

The maintenance beat looks every few seconds for completed generations with
a refine asked for after the fact and not ended (to re-send a stalled one,
to time out an overdue one). Without an index that finds them, each look
read every stage row of every generation. A partial index holds only the
open refine stages: a handful of rows, whatever the history.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

OPEN_REFINE = "name = 'refine' AND status IN ('pending', 'running')"


def upgrade() -> None:
    op.create_index(
        "ix_generation_stages_open_refine",
        "generation_stages",
        ["generation_id"],
        postgresql_where=sa.text(OPEN_REFINE),
        sqlite_where=sa.text(OPEN_REFINE),
    )


def downgrade() -> None:
    op.drop_index("ix_generation_stages_open_refine", table_name="generation_stages")
