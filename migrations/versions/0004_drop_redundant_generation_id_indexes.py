"""drop the generation_id indexes the unique constraints already provide

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

``generation_stages`` and ``generation_assets`` each had an index on
``generation_id`` beside a unique constraint whose first column is
``generation_id`` (``uq_generation_stage``: generation_id, name;
``uq_asset_position``: generation_id, position). The constraint's index serves
every lookup by generation (the status read, the runner's lock, deletes), so
the extra indexes only cost writes: 7 index entries per submit, one per asset.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generation_stages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_generation_stages_generation_id"))
    with op.batch_alter_table("generation_assets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_generation_assets_generation_id"))


def downgrade() -> None:
    with op.batch_alter_table("generation_assets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_generation_assets_generation_id"), ["generation_id"], unique=False
        )
    with op.batch_alter_table("generation_stages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_generation_stages_generation_id"), ["generation_id"], unique=False
        )
