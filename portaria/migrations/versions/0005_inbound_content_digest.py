"""intake: a digest of sender and body, so a re-delivered copy is known as one

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 17:20:00

A copy that arrives again by another route carries other trace headers, so its
bytes differ. Messages recorded before this revision have no digest (their
bytes are gone); they are still matched by their whole-bytes hash.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_column("content_sha256")
