"""label counts index: (label, image_id) instead of (label)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 22:00:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Replace the label index by one that also covers image_id (facet counts)."""
    op.create_index("ix_image_labels_label_image", "image_labels", ["label", "image_id"])
    op.drop_index("ix_image_labels_label", table_name="image_labels")


def downgrade() -> None:
    """Back to the plain label index."""
    op.create_index("ix_image_labels_label", "image_labels", ["label"])
    op.drop_index("ix_image_labels_label_image", table_name="image_labels")
