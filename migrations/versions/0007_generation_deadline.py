"""a generation's deadline and its error code

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

``deadline_at``: when a generation that is not final yet fails with code
``timeout`` (``BFF_GENERATION_TIMEOUT`` after its submit, or after a retry).
Rows from before have none: their creation time plus the timeout is used.
``error_code``: what kind of failure ``error_message`` describes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("error_code", sa.String(length=40), nullable=True))


def downgrade() -> None:
    # Not in batch mode: SQLite drops a column in place, while a batch copies
    # the table, which the views on ``generations`` forbid.
    op.drop_column("generations", "error_code")
    op.drop_column("generations", "deadline_at")
