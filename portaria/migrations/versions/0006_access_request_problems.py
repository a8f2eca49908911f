"""provisioning: why a request's unusable fields cannot be used

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 10:00:00

Requests recorded before this revision get no problems: their missing
fields were told to the requester as missing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Added nullable, filled, then made NOT NULL: the rows already there need a value.
    with op.batch_alter_table("access_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("problems", sa.JSON(), nullable=True))
    op.execute("UPDATE access_requests SET problems = '{}' WHERE problems IS NULL")
    with op.batch_alter_table("access_requests", schema=None) as batch_op:
        batch_op.alter_column("problems", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("access_requests", schema=None) as batch_op:
        batch_op.drop_column("problems")
