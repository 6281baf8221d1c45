"""Read-only catalog queries for browsing: image pages, label counts, cheap totals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from vitdex.db.images import where_filter
from vitdex.db.models import Image, ImageLabel, ImageStatus
from vitdex.filters import SearchFilter


@dataclass
class ImagePage:
    """One page of images with the total number matching."""

    images: list[Image]
    total: int


def _where(stmt: Select[Any], flt: SearchFilter, status: str | None) -> Select[Any]:
    # The same conditions as similar search, without the join on a space, so every
    # catalog row (pending and failed ones too) can be browsed.
    if status is not None:
        stmt = stmt.where(Image.status == status)
    return where_filter(stmt, flt)


def list_images(
    session: Session,
    flt: SearchFilter,
    *,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> ImagePage:
    """Images matching ``flt`` (and ``status``), newest photo first, with the total count.

    "Newest" is the EXIF capture time; photos without one come last, newest row first.
    """
    total = session.scalar(_where(select(func.count()).select_from(Image), flt, status)) or 0
    stmt = (
        _where(select(Image), flt, status)
        .order_by(Image.taken_at.desc().nulls_last(), Image.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return ImagePage(images=list(session.scalars(stmt)), total=int(total))


def label_counts(session: Session, limit: int | None = None) -> list[tuple[str, int]]:
    """Predicted labels with the number of images carrying each, most common first."""
    n = func.count(func.distinct(ImageLabel.image_id))
    stmt = (
        select(ImageLabel.label, n).group_by(ImageLabel.label).order_by(n.desc(), ImageLabel.label)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [(label, int(count)) for label, count in session.execute(stmt)]


def indexed_count(session: Session) -> int:
    """Number of indexed images (one indexed COUNT, for metrics)."""
    stmt = select(func.count()).select_from(Image).where(Image.status == ImageStatus.INDEXED)
    return int(session.scalar(stmt) or 0)
