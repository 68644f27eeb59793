"""Idempotency-Key for feedback and persona POSTs

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08

A retried heart withdrew the heart it had just given, and a retried persona
POST made a second persona. Each row now keeps the key (and the request's
hash) of the POST that made it, unique per user, as ``generations`` do. A
feedback row also keeps the key of the POST that withdrew it (a second heart
or outlier answers about the row it withdrew, which may carry its maker's
key already). No view reads these tables, so SQLite's table copy (batch
mode, for the constraints) needs no views set aside.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generation_feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("withdrawal_idempotency_key", sa.String(length=255), nullable=True)
        )
        batch_op.add_column(
            sa.Column("withdrawal_request_hash", sa.String(length=64), nullable=True)
        )
        batch_op.create_unique_constraint(
            "uq_generation_feedback_idempotency", ["user_id", "idempotency_key"]
        )
        batch_op.create_unique_constraint(
            "uq_generation_feedback_withdrawal_idempotency",
            ["user_id", "withdrawal_idempotency_key"],
        )
    with op.batch_alter_table("personas", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_personas_idempotency", ["user_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("personas", schema=None) as batch_op:
        batch_op.drop_constraint("uq_personas_idempotency", type_="unique")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("idempotency_key")
    with op.batch_alter_table("generation_feedback", schema=None) as batch_op:
        batch_op.drop_constraint("uq_generation_feedback_withdrawal_idempotency", type_="unique")
        batch_op.drop_constraint("uq_generation_feedback_idempotency", type_="unique")
        batch_op.drop_column("withdrawal_request_hash")
        batch_op.drop_column("withdrawal_idempotency_key")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("idempotency_key")
