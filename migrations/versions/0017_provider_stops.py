"""provider_stops: paid work owed a stop

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

A cancel, delete or timeout canceled the generation's Replicate
predictions in the request (or the maintenance pass) itself, waiting on
Replicate. The stop is now written with the cancel and made by a task;
the beat sends again a stop not made (app/pipeline/stops.py).
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_stops",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("generation_id", sa.String(40), nullable=False),
        sa.Column("work", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("provider_stops")
