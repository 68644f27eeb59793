"""asset variants: an image refined from another (upscaled, cut out)

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-06

``variant``: ``original`` (what ``generate`` made), ``upscaled`` or
``cutout`` (what ``refine`` made of another asset); ``source_asset_id``: that
other asset. Existing rows are originals without a source.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"  # re-chained at merge
branch_labels = None
depends_on = None


FK = "fk_generation_assets_source_asset_id"
REFERENCE = "REFERENCES generation_assets (id) ON DELETE SET NULL"


def upgrade() -> None:
    # ADD COLUMN in place, not a batch copy: on SQLite a batch rebuilds the
    # table, which the generation_summary view (it reads the table) forbids.
    op.add_column(
        "generation_assets",
        sa.Column("variant", sa.String(20), nullable=False, server_default="original"),
    )
    if op.get_bind().dialect.name == "sqlite":  # alembic cannot add the reference there
        op.execute(f"ALTER TABLE generation_assets ADD COLUMN source_asset_id INTEGER {REFERENCE}")
        return
    op.add_column(
        "generation_assets",
        sa.Column(
            "source_asset_id",
            sa.Integer(),
            sa.ForeignKey("generation_assets.id", name=FK, ondelete="SET NULL"),
            nullable=True,
        ),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(FK, "generation_assets", type_="foreignkey")
        op.drop_column("generation_assets", "source_asset_id")
        op.drop_column("generation_assets", "variant")
        return
    # SQLite drops a referencing column only by copying the table, which the
    # views forbid: set them aside (as they are) and put them back after.
    views = op.get_bind().execute(
        sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY rowid")
    )
    views = list(views)
    for name, _ in reversed(views):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("generation_assets", schema=None) as batch_op:
        batch_op.drop_column("source_asset_id")
        batch_op.drop_column("variant")
    for _, sql in views:
        op.execute(sql)
