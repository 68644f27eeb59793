"""submission_tombstones: deleted submissions the rate limit still counts

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07

The submission rate was counted from the user's rows in ``generations``
created in the window, so submitting up to the limit, deleting and submitting
again was never refused. A delete now leaves, for each generation the window
still counts, a row of the user and the generation's creation time (nothing
else: a delete is for privacy), which the rate counts beside the generations
until the beat forgets it (app/domain/tombstones.py). No key of its own;
the index serves the rate's look, (user_id, created_at) as the generations'.
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "submission_tombstones",
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_submission_tombstones_user_created",
        "submission_tombstones",
        ["user_id", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("submission_tombstones")
