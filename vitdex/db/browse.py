"""Read-only catalog queries for browsing: image pages, label counts, cheap totals."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from vitdex.db.models import Image, ImageLabel, ImageStatus
from vitdex.search.store import SearchFilter


@dataclass
class ImagePage:
    """One page of images with the total number matching."""

    images: list[Image]
    total: int


def _where(stmt: Select[Any], flt: SearchFilter, status: str | None) -> Select[Any]:
    # The same conditions as repo.filter_image_ids, without the join on a space, so every
    # catalog row (pending and failed ones too) can be browsed.
    if status is not None:
        stmt = stmt.where(Image.status == status)
    if flt.library_ids:
        stmt = stmt.where(Image.library_id.in_(flt.library_ids))
    if flt.path_prefix:
        prefix = flt.path_prefix.rstrip(os.sep) + os.sep
        stmt = stmt.where(Image.path.startswith(prefix, autoescape=True))
    if flt.taken_after is not None:
        stmt = stmt.where(Image.taken_at >= flt.taken_after)
    if flt.taken_before is not None:
        stmt = stmt.where(Image.taken_at < flt.taken_before)
    if flt.camera_make is not None:
        stmt = stmt.where(Image.camera_make == flt.camera_make)
    if flt.camera_model is not None:
        stmt = stmt.where(Image.camera_model == flt.camera_model)
    if flt.label is not None:
        stmt = stmt.where(
            select(ImageLabel.id)
            .where(ImageLabel.image_id == Image.id, ImageLabel.label == flt.label)
            .exists()
        )
    return stmt


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
