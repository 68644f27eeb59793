"""asset variants: an image refined from another (upscaled, cut out)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

``variant``: ``original`` (what ``generate`` made), ``upscaled`` or
``cutout`` (what ``refine`` made of another asset); ``source_asset_id``: that
other asset. Existing rows are originals without a source.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


FK = "fk_generation_assets_source_asset_id"


@contextmanager
def _views_set_aside() -> Iterator[None]:
    """SQLite changes a table's constraints by copying it, which the views that
    read it forbid: drop them (as they are) and put them back after."""
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    views = list(
        op.get_bind().execute(
            sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY rowid")
        )
    )
    for name, _ in reversed(views):
        op.execute(f"DROP VIEW {name}")
    yield
    for _, sql in views:
        op.execute(sql)


def upgrade() -> None:
    with _views_set_aside(), op.batch_alter_table("generation_assets") as batch_op:
        batch_op.add_column(
            sa.Column("variant", sa.String(20), nullable=False, server_default="original")
        )
        batch_op.add_column(sa.Column("source_asset_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            FK, "generation_assets", ["source_asset_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with _views_set_aside(), op.batch_alter_table("generation_assets") as batch_op:
        batch_op.drop_constraint(FK, type_="foreignkey")
        batch_op.drop_column("source_asset_id")
        batch_op.drop_column("variant")
