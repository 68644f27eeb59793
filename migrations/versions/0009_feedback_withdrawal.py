"""feedback can be withdrawn, and its learning undone

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

``removed_at``: when a heart or outlier was taken back (a second one) or a
rating replaced by a newer one; the generation's ``feedback`` shows only rows
without it. ``undone_at``: when the learner undid what the row had taught the
token scores (or found it had taught nothing). Rows from before have neither:
they stand, as they did.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generation_feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generation_feedback", schema=None) as batch_op:
        batch_op.drop_column("undone_at")
        batch_op.drop_column("removed_at")
