"""SQL for the image family: libraries, images, their predicted labels, and status counts.

Functions take a :class:`~sqlalchemy.orm.Session` and leave committing to the caller, so
one indexing batch (its vectors' rows, labels and image updates) commits as one unit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.orm import Session

from vitdex.db.head_models import Head, HeadLabel
from vitdex.db.models import Image, ImageLabel, ImageStatus, ImageVector, Library, utcnow
from vitdex.db.review_models import DuplicateGroup, DuplicateMember, DuplicateStatus, ImageTag, Tag
from vitdex.db.rows import chunks, get_row
from vitdex.filters import SearchFilter, image_payload, split_head_label, tag_key

__all__ = [
    "KnownImage",
    "copy_image_meta",
    "delete_images",
    "delete_library",
    "failed_images",
    "filter_image_ids",
    "find_image_by_path",
    "find_indexed_by_sha",
    "get_image",
    "get_images",
    "get_library",
    "insert_pending",
    "known_images",
    "labels_of",
    "last_indexed_at",
    "library_counts",
    "library_for",
    "list_libraries",
    "mark_missing",
    "marked_duplicate",
    "move_image",
    "payloads",
    "record_failed",
    "record_indexed",
    "reusable_by_sha",
    "set_labels",
    "set_pending",
    "status_counts",
    "touch_image",
    "where_filter",
]


# --------------------------------------------------------------------------- libraries


def library_for(session: Session, folder: str) -> Library:
    """The library that ``folder`` belongs to, created when no library contains it.

    A folder inside an existing library is scanned as part of it. A new library that
    contains older ones absorbs them: their images move under the new root unchanged.
    """
    libraries = session.scalars(select(Library)).all()
    for lib in libraries:
        if folder == lib.root or folder.startswith(lib.root.rstrip(os.sep) + os.sep):
            return lib
    new = Library(root=folder)
    session.add(new)
    session.flush()
    prefix = folder.rstrip(os.sep) + os.sep
    for lib in libraries:
        if lib.root.startswith(prefix):
            session.execute(
                update(Image).where(Image.library_id == lib.id).values(library_id=new.id)
            )
            session.delete(lib)
    session.flush()
    return new


def get_library(session: Session, library_id: int) -> Library:
    """One library, or :class:`NotFoundError`."""
    return get_row(session, Library, library_id, "library")


def library_counts(session: Session) -> dict[int, dict[str, int]]:
    """Images per status, per library id."""
    counts: dict[int, dict[str, int]] = {}
    stmt = select(Image.library_id, Image.status, func.count()).group_by(
        Image.library_id, Image.status
    )
    for library_id, status, n in session.execute(stmt):
        counts.setdefault(library_id, {s.value: 0 for s in ImageStatus})[status] = int(n)
    return counts


def delete_library(session: Session, library_id: int) -> list[int]:
    """Delete a library and its image rows (never the files); returns the image ids."""
    ids = list(session.scalars(select(Image.id).where(Image.library_id == library_id)))
    delete_images(session, ids)
    session.execute(delete(Library).where(Library.id == library_id))
    return ids


def list_libraries(session: Session) -> list[Library]:
    """All libraries, oldest first."""
    return list(session.scalars(select(Library).order_by(Library.id)))


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class KnownImage:
    """What a scan needs to know of an image already in the catalog."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    status: str
    vectors: int  # how many of the current spaces hold its vector


def known_images(session: Session, scope: str, space_ids: Sequence[int]) -> dict[str, KnownImage]:
    """Images whose path lies under ``scope`` (a folder), keyed by path."""
    prefix = scope.rstrip(os.sep) + os.sep
    vec_count = (
        select(ImageVector.image_id, func.count().label("n"))
        .where(ImageVector.space_id.in_(space_ids or [-1]))
        .group_by(ImageVector.image_id)
        .subquery()
    )
    stmt = (
        select(
            Image.id,
            Image.path,
            Image.size,
            Image.mtime_ns,
            Image.sha256,
            Image.status,
            func.coalesce(vec_count.c.n, 0),
        )
        .outerjoin(vec_count, vec_count.c.image_id == Image.id)
        .where(Image.path.startswith(prefix, autoescape=True))
    )
    return {
        row[1]: KnownImage(row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]))
        for row in session.execute(stmt)
    }


def insert_pending(
    session: Session, library_id: int, files: Sequence[tuple[str, int, int]]
) -> dict[str, int]:
    """Insert new files as pending images; returns their ids keyed by path."""
    ids: dict[str, int] = {}
    now = utcnow()
    for chunk in chunks(files, 1000):
        rows = [
            {
                "library_id": library_id,
                "path": path,
                "size": size,
                "mtime_ns": mtime_ns,
                "status": ImageStatus.PENDING,
                "created_at": now,
                "updated_at": now,
            }
            for path, size, mtime_ns in chunk
        ]
        session.execute(insert(Image), rows)
        paths = [path for path, _, _ in chunk]
        for image_id, path in session.execute(
            select(Image.id, Image.path).where(Image.path.in_(paths))
        ):
            ids[path] = image_id
    return ids


def set_pending(session: Session, ids: Sequence[int]) -> None:
    """Mark images for (re-)embedding."""
    for chunk in chunks(ids):
        session.execute(update(Image).where(Image.id.in_(chunk)).values(status=ImageStatus.PENDING))


def touch_image(session: Session, image_id: int, size: int, mtime_ns: int) -> None:
    """Record a new size/mtime for a file whose content did not change."""
    session.execute(update(Image).where(Image.id == image_id).values(size=size, mtime_ns=mtime_ns))


def record_indexed(session: Session, image_id: int, values: Mapping[str, Any]) -> None:
    """Store what decoding learnt of an image and mark it indexed."""
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(**values, status=ImageStatus.INDEXED, error=None, indexed_at=utcnow())
    )


def record_failed(
    session: Session, image_id: int, error: str, *, sha256: str | None, size: int, mtime_ns: int
) -> None:
    """Mark an image failed with its reason (and drop any vectors it had)."""
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(status=ImageStatus.FAILED, error=error, sha256=sha256, size=size, mtime_ns=mtime_ns)
    )
    session.execute(delete(ImageVector).where(ImageVector.image_id == image_id))
    session.execute(delete(ImageLabel).where(ImageLabel.image_id == image_id))


def move_image(session: Session, image_id: int, new_path: str, library_id: int) -> None:
    """Give an image a new path (a renamed or moved file with the same content)."""
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(path=new_path, library_id=library_id, status=ImageStatus.INDEXED, error=None)
    )


def delete_images(session: Session, ids: Sequence[int]) -> None:
    """Delete image rows outright (with their vector and label rows)."""
    for chunk in chunks(ids):
        session.execute(delete(ImageVector).where(ImageVector.image_id.in_(chunk)))
        session.execute(delete(ImageLabel).where(ImageLabel.image_id.in_(chunk)))
        session.execute(delete(Image).where(Image.id.in_(chunk)))


def mark_missing(session: Session, ids: Sequence[int]) -> None:
    """Mark images whose files are gone; their vector and label rows go."""
    for chunk in chunks(ids):
        session.execute(delete(ImageVector).where(ImageVector.image_id.in_(chunk)))
        session.execute(delete(ImageLabel).where(ImageLabel.image_id.in_(chunk)))
        session.execute(update(Image).where(Image.id.in_(chunk)).values(status=ImageStatus.MISSING))


def copy_image_meta(session: Session, source_id: int, target_id: int) -> None:
    """Copy decoded metadata and labels from an identical image (same sha256)."""
    src = session.get_one(Image, source_id)
    session.execute(
        update(Image)
        .where(Image.id == target_id)
        .values(
            sha256=src.sha256,
            width=src.width,
            height=src.height,
            format=src.format,
            taken_at=src.taken_at,
            camera_make=src.camera_make,
            camera_model=src.camera_model,
            orientation=src.orientation,
            gps_lat=src.gps_lat,
            gps_lon=src.gps_lon,
            status=ImageStatus.INDEXED,
            error=None,
            indexed_at=utcnow(),
        )
    )
    labels = session.scalars(select(ImageLabel).where(ImageLabel.image_id == source_id)).all()
    set_labels(
        session,
        target_id,
        [(lab.label, lab.score) for lab in sorted(labels, key=lambda lab: lab.rank)],
        labels[0].model_id if labels else "",
    )


def reusable_by_sha(session: Session, space_ids: Sequence[int]) -> dict[str, int]:
    """sha256 → id of an indexed image that has a vector in every given space."""
    if not space_ids:
        return {}
    stmt = (
        select(Image.sha256, func.min(Image.id))
        .join(ImageVector, ImageVector.image_id == Image.id)
        .where(
            Image.status == ImageStatus.INDEXED,
            Image.sha256.is_not(None),
            ImageVector.space_id.in_(space_ids),
        )
        .group_by(Image.id, Image.sha256)
        .having(func.count() == len(space_ids))
    )
    found: dict[str, int] = {}
    for sha, image_id in session.execute(stmt):
        if sha is not None:
            found.setdefault(sha, image_id)
    return found


def where_filter(stmt: Select[Any], flt: SearchFilter) -> Select[Any]:
    """Add the conditions of ``flt`` to a statement over :class:`Image`."""
    if flt.library_ids:
        stmt = stmt.where(Image.library_id.in_(flt.library_ids))
    if flt.path_prefix:
        prefix = flt.path_prefix.rstrip(os.sep) + os.sep
        stmt = stmt.where(Image.path.startswith(prefix, autoescape=True))
    if flt.taken_after is not None:
        stmt = stmt.where(Image.taken_at >= flt.taken_after)
    if flt.taken_before is not None:  # exclusive, as on every backend
        stmt = stmt.where(Image.taken_at < flt.taken_before)
    # Make and model ignore case (EXIF writes "Apple", people type "apple").
    if flt.camera_make is not None:
        stmt = stmt.where(func.lower(Image.camera_make) == func.lower(flt.camera_make))
    if flt.camera_model is not None:
        stmt = stmt.where(func.lower(Image.camera_model) == func.lower(flt.camera_model))
    if flt.label is not None:
        stmt = stmt.where(
            select(ImageLabel.id)
            .where(ImageLabel.image_id == Image.id, ImageLabel.label == flt.label)
            .exists()
        )
    for key in dict.fromkeys(tag_key(t) for t in flt.tags):  # every tag must be there
        stmt = stmt.where(
            select(ImageTag.tag_id)
            .join(Tag, Tag.id == ImageTag.tag_id)
            .where(ImageTag.image_id == Image.id, Tag.key == key)
            .exists()
        )
    if flt.hide_duplicates:
        stmt = stmt.where(~marked_duplicate(Image.id))
    for value in dict.fromkeys(flt.head_labels):  # every HEAD:LABEL must hold
        head, label = split_head_label(value)
        stmt = stmt.where(
            select(HeadLabel.image_id)
            .join(Head, Head.id == HeadLabel.head_id)
            .where(
                HeadLabel.image_id == Image.id,
                Head.name == head,
                func.lower(HeadLabel.label) == label.lower(),
            )
            .exists()
        )
    return stmt


def marked_duplicate(image_id: Any) -> Any:
    """SQL condition: the image is a member of a group resolved by keeping another one."""
    return (
        select(DuplicateMember.image_id)
        .join(DuplicateGroup, DuplicateGroup.id == DuplicateMember.group_id)
        .where(
            DuplicateMember.image_id == image_id,
            DuplicateGroup.status == DuplicateStatus.KEPT,
            DuplicateGroup.keeper_id != image_id,
        )
        .exists()
    )


def filter_image_ids(session: Session, flt: SearchFilter, space_id: int) -> list[int]:
    """Ids of the images with a vector in the space that satisfy every condition of ``flt``.

    This is how FAISS filters: the id list becomes an ``IDSelector``, so the search is
    exact over the matching images instead of over-fetching and hoping.
    """
    stmt = (
        select(Image.id)
        .join(ImageVector, ImageVector.image_id == Image.id)
        .where(ImageVector.space_id == space_id)
    )
    return list(session.scalars(where_filter(stmt, flt).order_by(Image.id)))


def payloads(session: Session, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The filterable metadata of each image, in the order of ``ids`` (for Qdrant)."""
    images = get_images(session, ids)
    labels = labels_of(session, ids)
    return [
        image_payload(
            library_id=images[i].library_id,
            path=images[i].path,
            taken_at=images[i].taken_at,
            camera_make=images[i].camera_make,
            camera_model=images[i].camera_model,
            labels=[label for label, _ in labels.get(i, [])],
        )
        for i in ids
    ]


def get_images(session: Session, ids: Sequence[int]) -> dict[int, Image]:
    """Images by id (missing ids are left out)."""
    found: dict[int, Image] = {}
    for chunk in chunks(list(ids)):
        for img in session.scalars(select(Image).where(Image.id.in_(chunk))):
            found[img.id] = img
    return found


def get_image(session: Session, image_id: int) -> Image:
    """One image, or :class:`NotFoundError`."""
    return get_row(session, Image, image_id, "image")


def find_image_by_path(session: Session, path: str) -> Image | None:
    """The image at ``path``, if indexed."""
    return session.scalar(select(Image).where(Image.path == path))


def find_indexed_by_sha(session: Session, sha256: str) -> Image | None:
    """An indexed image with this content, if any."""
    return session.scalar(
        select(Image)
        .where(Image.sha256 == sha256, Image.status == ImageStatus.INDEXED)
        .order_by(Image.id)
        .limit(1)
    )


# --------------------------------------------------------------------------- labels


def labels_of(session: Session, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
    """Top labels per image, best first."""
    found: dict[int, list[tuple[str, float]]] = {}
    for chunk in chunks(list(ids)):
        stmt = (
            select(ImageLabel.image_id, ImageLabel.label, ImageLabel.score)
            .where(ImageLabel.image_id.in_(chunk))
            .order_by(ImageLabel.image_id, ImageLabel.rank)
        )
        for image_id, label, score in session.execute(stmt):
            found.setdefault(image_id, []).append((label, score))
    return found


def set_labels(
    session: Session, image_id: int, labels: Sequence[tuple[str, float]], model_id: str
) -> None:
    """Replace an image's predicted labels."""
    session.execute(delete(ImageLabel).where(ImageLabel.image_id == image_id))
    if labels:
        session.execute(
            insert(ImageLabel),
            [
                {
                    "image_id": image_id,
                    "rank": rank,
                    "label": label[:256],
                    "score": float(score),
                    "model_id": model_id,
                }
                for rank, (label, score) in enumerate(labels, start=1)
            ],
        )


# --------------------------------------------------------------------------- status


def status_counts(session: Session) -> dict[str, int]:
    """Number of images per status."""
    counts = {status.value: 0 for status in ImageStatus}
    for status, n in session.execute(select(Image.status, func.count()).group_by(Image.status)):
        counts[status] = int(n)
    return counts


def failed_images(session: Session, limit: int = 100) -> list[tuple[int, str, str | None]]:
    """The failed images with their reasons, most recent first."""
    stmt = (
        select(Image.id, Image.path, Image.error)
        .where(Image.status == ImageStatus.FAILED)
        .order_by(Image.updated_at.desc(), Image.id.desc())
        .limit(limit)
    )
    return [(row[0], row[1], row[2]) for row in session.execute(stmt)]


def last_indexed_at(session: Session) -> datetime | None:
    """When the most recent image was embedded."""
    return session.scalar(select(func.max(Image.indexed_at)))
