"""room on each page for the updates a generation's rows go through

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

A stage row is written three times (pending, running, finished) within a
second or so of its insert, and a generation row once or twice per stage. With
pages packed full (fillfactor 100) an update cannot stay on its page, so it is
not a heap-only (HOT) update: every index of the table gets a new entry.
Leaving room lets the stage rows' updates (none of their indexed columns
change) stay HOT. PostgreSQL only; new pages get the setting.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = {"generation_stages": 70, "generations": 80}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, fill in TABLES.items():
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {fill})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
