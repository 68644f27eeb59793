"""batches

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

``batches``: one row per ``POST /api/batches`` (its own Idempotency-Key, the
whole batch's estimated cost, the completion webhook's URL); its status is
derived from its generations' statuses, except ``canceled_at`` (a cancel was
asked for) and ``finished_at`` (every generation final: the completion
webhook was recorded). ``generations.batch_id`` names a generation's batch
(null for a single submit); deleting a batch deletes its generations.
``webhook_deliveries`` carry a batch's completion message too: a delivery is
about a generation or a batch.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("estimated_cost", sa.Numeric(precision=10, scale=4), nullable=False),
        sa.Column("webhook_url", sa.String(length=2000), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_batches_idempotency"),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_index("ix_batches_user_created", ["user_id", "created_at", "id"])
        # The completion sweep: batches not finished yet.
        batch_op.create_index("ix_batches_finished", ["finished_at"])
    with _views_set_aside(), op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(
            "fk_generations_batch", "batches", ["batch_id"], ["id"], ondelete="CASCADE"
        )
        batch_op.create_index("ix_generations_batch", ["batch_id"])
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(length=40), nullable=True))
        batch_op.alter_column("generation_id", existing_type=sa.String(length=40), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM webhook_deliveries WHERE generation_id IS NULL")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.alter_column("generation_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.drop_column("batch_id")
    with _views_set_aside(), op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_index("ix_generations_batch")
        batch_op.drop_constraint("fk_generations_batch", type_="foreignkey")
        batch_op.drop_column("batch_id")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index("ix_batches_finished")
        batch_op.drop_index("ix_batches_user_created")
    op.drop_table("batches")


@contextmanager
def _views_set_aside() -> Iterator[None]:
    """SQLite alters a table's constraints by copying it, which the views on
    ``generations`` forbid: they are dropped and made again, as they were."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    views = bind.execute(
        sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY rowid")
    ).all()
    for name, _sql in reversed(views):
        op.execute(f'DROP VIEW "{name}"')
    yield
    for _name, sql in views:
        op.execute(sql)
