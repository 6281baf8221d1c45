"""tags, saved searches, duplicate groups and their members

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 01:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Tags on images, saved searches, duplicate groups (see vitdex.db.review_models)."""
    op.create_table(
        "saved_searches",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("query", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saved_searches")),
        sa.UniqueConstraint("name", name=op.f("uq_saved_searches_name")),
    )
    op.create_table(
        "tags",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tags")),
        sa.UniqueConstraint("key", name=op.f("uq_tags_key")),
    )
    op.create_table(
        "duplicate_groups",
        sa.Column("id", ID, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("space_id", ID, nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("suggested_keeper_id", ID, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("keeper_id", ID, nullable=True),
        sa.Column("min_score", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["keeper_id"],
            ["images.id"],
            name=op.f("fk_duplicate_groups_keeper_id_images"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_duplicate_groups_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["suggested_keeper_id"],
            ["images.id"],
            name=op.f("fk_duplicate_groups_suggested_keeper_id_images"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_duplicate_groups")),
    )
    with op.batch_alter_table("duplicate_groups", schema=None) as batch_op:
        batch_op.create_index("ix_duplicate_groups_status_kind", ["status", "kind"], unique=False)

    op.create_table(
        "image_tags",
        sa.Column("image_id", ID, nullable=False),
        sa.Column("tag_id", ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_image_tags_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["tags.id"], name=op.f("fk_image_tags_tag_id_tags"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("image_id", "tag_id", name=op.f("pk_image_tags")),
    )
    with op.batch_alter_table("image_tags", schema=None) as batch_op:
        batch_op.create_index("ix_image_tags_tag_image", ["tag_id", "image_id"], unique=False)

    op.create_table(
        "duplicate_members",
        sa.Column("group_id", ID, nullable=False),
        sa.Column("image_id", ID, nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["duplicate_groups.id"],
            name=op.f("fk_duplicate_members_group_id_duplicate_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_duplicate_members_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "image_id", name=op.f("pk_duplicate_members")),
    )
    with op.batch_alter_table("duplicate_members", schema=None) as batch_op:
        batch_op.create_index("ix_duplicate_members_image_id", ["image_id"], unique=False)


def downgrade() -> None:
    """Drop the review tables."""
    with op.batch_alter_table("duplicate_members", schema=None) as batch_op:
        batch_op.drop_index("ix_duplicate_members_image_id")

    op.drop_table("duplicate_members")
    with op.batch_alter_table("image_tags", schema=None) as batch_op:
        batch_op.drop_index("ix_image_tags_tag_image")

    op.drop_table("image_tags")
    with op.batch_alter_table("duplicate_groups", schema=None) as batch_op:
        batch_op.drop_index("ix_duplicate_groups_status_kind")

    op.drop_table("duplicate_groups")
    op.drop_table("tags")
    op.drop_table("saved_searches")
