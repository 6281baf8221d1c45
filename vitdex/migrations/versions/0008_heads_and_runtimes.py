"""heads and their labels; the agreement bound and first runtime of a space

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 05:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Heads and head labels (vitdex.db.head_models); spaces.min_agreement and runtime."""
    op.create_table(
        "heads",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("space_id", ID, nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("model_revision", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_spec", sa.JSON(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trained_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["space_id"], ["spaces.id"], name=op.f("fk_heads_space_id_spaces"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_heads")),
        sa.UniqueConstraint("name", name=op.f("uq_heads_name")),
    )
    op.create_table(
        "head_labels",
        sa.Column("head_id", ID, nullable=False),
        sa.Column("image_id", ID, nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("margin", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["head_id"], ["heads.id"], name=op.f("fk_head_labels_head_id_heads"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_head_labels_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("head_id", "image_id", name=op.f("pk_head_labels")),
    )
    with op.batch_alter_table("head_labels", schema=None) as batch_op:
        batch_op.create_index(
            "ix_head_labels_head_label_image", ["head_id", "label", "image_id"], unique=False
        )
        batch_op.create_index("ix_head_labels_head_margin", ["head_id", "margin"], unique=False)
    with op.batch_alter_table("spaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("min_agreement", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("runtime", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Drop the heads and the spaces' runtime columns."""
    with op.batch_alter_table("spaces", schema=None) as batch_op:
        batch_op.drop_column("runtime")
        batch_op.drop_column("min_agreement")
    with op.batch_alter_table("head_labels", schema=None) as batch_op:
        batch_op.drop_index("ix_head_labels_head_margin")
        batch_op.drop_index("ix_head_labels_head_label_image")
    op.drop_table("head_labels")
    op.drop_table("heads")
