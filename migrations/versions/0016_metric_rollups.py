"""metric_rollups: the scrape's history, rolled up

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Every scrape of /metrics summed its counters (stage durations, retries,
cost) over every row ever written: about a second of database time at
200,000 generations, growing with history. The maintenance beat now rolls
what finished before a watermark into a few rows; a scrape adds what
finished since, found through the new indexes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The stages table is the largest: PostgreSQL builds its index without
    # blocking the workers' writes (outside a transaction, as it must), first,
    # so that a build that fails (say, a lock not had in time) leaves nothing
    # else committed and the upgrade can simply run again.
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_generation_stages_finished")
            op.create_index(
                "ix_generation_stages_finished",
                "generation_stages",
                ["finished_at"],
                postgresql_concurrently=True,
            )
    else:
        op.create_index("ix_generation_stages_finished", "generation_stages", ["finished_at"])
    op.create_table(
        "metric_rollups",
        sa.Column("family", sa.String(20), primary_key=True),
        sa.Column("label", sa.String(40), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("buckets", sa.JSON(), nullable=False),
    )
    op.create_index("ix_charges_created", "charges", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_charges_created", table_name="charges")
    op.drop_index("ix_generation_stages_finished", table_name="generation_stages")
    op.drop_table("metric_rollups")
