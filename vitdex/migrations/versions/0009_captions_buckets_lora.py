"""dataset trigger and class words and crop mode; LoRA checkpoints with their source

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 08:15:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """datasets.trigger_word/class_word/crop_mode; checkpoints.kind/source_id/lora_rank."""
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trigger_word", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("class_word", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("crop_mode", sa.String(length=16), nullable=False, server_default="square")
        )
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="checkpoint")
        )
        batch_op.add_column(sa.Column("source_id", ID, nullable=True))
        batch_op.add_column(sa.Column("lora_rank", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_checkpoints_source_id_checkpoints"),
            "checkpoints",
            ["source_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    """Drop the columns again."""
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_checkpoints_source_id_checkpoints"), type_="foreignkey"
        )
        batch_op.drop_column("lora_rank")
        batch_op.drop_column("source_id")
        batch_op.drop_column("kind")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("crop_mode")
        batch_op.drop_column("class_word")
        batch_op.drop_column("trigger_word")
