"""job heartbeat: when a running job last showed it was alive

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add jobs.heartbeat_at (NULL for jobs that never ran with one)."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop jobs.heartbeat_at."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("heartbeat_at")
