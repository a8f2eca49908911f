"""engine: rule run heartbeat, so only a run left by a dead process is resumed

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 16:00:00

Runs recorded before this revision get their start as heartbeat: one still
marked running is then as old as its start, and resumed once it is stale.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import portaria.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rule_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("heartbeat_at", portaria.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            "ix_rule_runs_status_heartbeat", ["status", "heartbeat_at"], unique=False
        )
    op.execute("UPDATE rule_runs SET heartbeat_at = started_at WHERE heartbeat_at IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("rule_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_rule_runs_status_heartbeat")
        batch_op.drop_column("heartbeat_at")
