"""SQL models of what people decide about their photos: tags, saved searches and
duplicate groups with their resolutions.

Kept apart from :mod:`vitdex.db.models` (what indexing records) so each stays small;
both share one :class:`~vitdex.db.models.Base`, so one metadata and one migration chain
cover them. ``vitdex.db`` imports this module, so the tables are always registered.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vitdex.db.models import Base, BigId, utcnow

__all__ = [
    "DuplicateGroup",
    "DuplicateKind",
    "DuplicateMember",
    "DuplicateStatus",
    "ImageTag",
    "SavedSearch",
    "Tag",
]


class Tag(Base):
    """A tag people put on photos ("receipts", "rex"); names compare ignoring case."""

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: The name as first written (shown).
    name: Mapped[str] = mapped_column(String(128))
    #: The name case-folded: what is unique and what filters match.
    key: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImageTag(Base):
    """One tag on one image."""

    __tablename__ = "image_tags"
    __table_args__ = (
        # "images with tag T" (filters, counts) reads this index alone.
        Index("ix_image_tags_tag_image", "tag_id", "image_id"),
    )

    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SavedSearch(Base):
    """A similarity query kept by name: examples, filters, space and score cut-off.

    ``query`` holds the request as the API takes it, so running a saved search is
    running that request again against today's catalog.
    """

    __tablename__ = "saved_searches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    query: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DuplicateKind(enum.StrEnum):
    """How a group's photos were found to be copies."""

    EXACT = "exact"  # the same bytes (sha256)
    NEAR = "near"  # cosine at or above a threshold in one space


class DuplicateStatus(enum.StrEnum):
    """Where a group's review stands."""

    OPEN = "open"  # not looked at yet
    KEPT = "kept"  # one photo kept; the others are marked as its duplicates
    NOT_DUPLICATES = "not_duplicates"  # a false match: the group never comes back


class DuplicateGroup(Base):
    """Photos found to be copies of each other, and what the reviewer decided.

    A decided group is never reopened: a later scan leaves out every pair of photos that
    a decided group already holds. Nothing is ever deleted from disk; "kept" only marks
    the other members (``SearchFilter.hide_duplicates`` leaves them out).
    """

    __tablename__ = "duplicate_groups"
    __table_args__ = (Index("ix_duplicate_groups_status_kind", "status", "kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    #: The space a near group was found in (None for exact copies).
    space_id: Mapped[int | None] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    #: The cosine threshold a near group was found at.
    threshold: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=DuplicateStatus.OPEN)
    #: The member the rules suggest keeping, and why (``reason``).
    suggested_keeper_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL")
    )
    reason: Mapped[str | None] = mapped_column(Text)
    #: The member the reviewer kept (status ``kept``).
    keeper_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    #: The lowest similarity between a member and the suggested keeper.
    min_score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]


class DuplicateMember(Base):
    """One photo of a duplicate group, with its similarity to the suggested keeper."""

    __tablename__ = "duplicate_members"
    __table_args__ = (Index("ix_duplicate_members_image_id", "image_id"),)

    group_id: Mapped[int] = mapped_column(
        ForeignKey("duplicate_groups.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    score: Mapped[float | None] = mapped_column(Float)
