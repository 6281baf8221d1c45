"""The values a metadata filter can name, as the catalog holds them.

Two jobs: find which stored spellings a camera make or model typed in any case stands for
(a payload backend matches exact values), and, when a filter value matches no photo, say
which stored values look like it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from vitdex.db.head_models import Head
from vitdex.db.images import where_filter
from vitdex.db.models import Image, ImageLabel, ImageVector, Space
from vitdex.db.review_models import ImageTag, Tag
from vitdex.filters import FilterMiss, SearchFilter, close_values, split_head_label, tag_key

__all__ = [
    "Adjacent",
    "FacetCounts",
    "adjacent",
    "facet_counts",
    "filter_misses",
    "matching_ids",
    "space_counts",
    "with_spellings",
]

#: How many of the most common values a miss lists when none is close.
COMMON_SHOWN = 8
#: How many tags the tag facet lists at most (the most common).
TAGS_SHOWN = 100


def _column(field: str) -> InstrumentedAttribute[Any]:
    return {
        "camera_make": Image.camera_make,
        "camera_model": Image.camera_model,
        "label": ImageLabel.label,
    }[field]


def spellings(session: Session, field: str, value: str) -> tuple[str, ...]:
    """The stored spellings of a camera make or model that ``value`` matches ignoring
    case, by the same ``lower()`` comparison the SQL filter uses."""
    column = _column(field)
    stmt = select(column).where(func.lower(column) == func.lower(value)).distinct()
    return tuple(sorted(v for v in session.scalars(stmt) if v is not None))


def with_spellings(session: Session, flt: SearchFilter) -> SearchFilter:
    """``flt`` with the stored spellings of its camera make and model filled in."""
    make = model = None
    if flt.camera_make is not None:
        make = spellings(session, "camera_make", flt.camera_make)
    if flt.camera_model is not None:
        model = spellings(session, "camera_model", flt.camera_model)
    return replace(flt, camera_make_spellings=make, camera_model_spellings=model)


def _has(session: Session, field: str, value: str) -> bool:
    column = _column(field)
    if field == "label":
        cond = column == value
    else:
        cond = func.lower(column) == func.lower(value)
    return session.scalar(select(column).where(cond).limit(1)) is not None


def _counted(session: Session, field: str) -> list[str]:
    """Every stored value of the field, most common first."""
    column = _column(field)
    n = func.count()
    stmt = select(column, n).where(column.is_not(None)).group_by(column).order_by(n.desc(), column)
    return [value for value, _ in session.execute(stmt)]


def filter_misses(session: Session, flt: SearchFilter) -> list[FilterMiss]:
    """Each camera make, camera model, label or tag of ``flt`` that no catalog photo has,
    with the stored values close to it (or, with none close, the most common ones)."""
    misses = []
    for field in ("camera_make", "camera_model", "label"):
        value = getattr(flt, field)
        if value is None or _has(session, field, value):
            continue
        stored = _counted(session, field)
        close = close_values(value, stored)
        common = () if close else tuple(stored[:COMMON_SHOWN])
        misses.append(FilterMiss(field, value, close, common))
    if flt.tags:
        known = {key: name for key, name in session.execute(select(Tag.key, Tag.name))}
        for tag in dict.fromkeys(flt.tags):
            if tag_key(tag) in known:
                continue
            names = sorted(known.values(), key=str.casefold)
            close = close_values(tag, names)
            misses.append(
                FilterMiss("tags", tag, close, () if close else tuple(names[:COMMON_SHOWN]))
            )
    if flt.head_labels:
        misses.extend(_head_label_misses(session, flt.head_labels))
    return misses


def _head_label_misses(session: Session, values: tuple[str, ...]) -> list[FilterMiss]:
    """An unknown head is named with the heads there are; a label the head lacks with the
    head's classes that look like it (or all of them)."""
    classes = {name: list(c) for name, c in session.execute(select(Head.name, Head.classes))}
    misses = []
    for value in dict.fromkeys(values):
        head, label = split_head_label(value)
        if head not in classes:
            close = close_values(head, classes)
            known = tuple(f"head {h}" for h in (close or sorted(classes)[:COMMON_SHOWN]))
            misses.append(
                FilterMiss("head_labels", value, known if close else (), () if close else known)
            )
        elif label.lower() not in {c.lower() for c in classes[head]}:
            close = tuple(f"{head}:{c}" for c in close_values(label, classes[head]))
            every = tuple(f"{head}:{c}" for c in classes[head])
            misses.append(FilterMiss("head_labels", value, close, () if close else every))
    return misses


#: The order the library grid shows: newest photo first, undated last, newest row first.
LIBRARY_ORDER = (Image.taken_at.desc().nulls_last(), Image.id.desc())


@dataclass
class FacetCounts:
    """How many images each filter value would match, under the other filters.

    Each facet leaves out its own condition (the camera makes are counted as if no make
    were chosen), so a sidebar can show what clicking another value would give.
    """

    #: Images matching every condition.
    total: int
    libraries: list[tuple[int, int]]
    statuses: list[tuple[str, int]]
    camera_makes: list[tuple[str, int]]
    camera_models: list[tuple[str, int]]
    #: The most common labels only (``labels_limit``).
    labels: list[tuple[str, int]]
    years: list[tuple[int, int]]
    #: Tags by name as first written, the most common ``TAGS_SHOWN`` only.
    tags: list[tuple[str, int]]


def _matching(stmt: Select[Any], flt: SearchFilter, status: str | None) -> Select[Any]:
    if status is not None:
        stmt = stmt.where(Image.status == status)
    return where_filter(stmt, flt)


def _grouped(
    session: Session,
    column: ColumnElement[Any] | InstrumentedAttribute[Any],
    flt: SearchFilter,
    status: str | None,
    limit: int | None = None,
) -> list[tuple[Any, int]]:
    n = func.count()
    stmt = _matching(select(column, n).select_from(Image), flt, status)
    stmt = stmt.where(column.is_not(None)).group_by(column).order_by(n.desc(), column)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [(value, int(count)) for value, count in session.execute(stmt)]


def _label_counts(
    session: Session, flt: SearchFilter, status: str | None, limit: int
) -> list[tuple[str, int]]:
    n = func.count(func.distinct(ImageLabel.image_id))
    stmt: Any = select(ImageLabel.label, n).group_by(ImageLabel.label)
    if status is not None or not flt.is_empty():
        stmt = _matching(stmt.join(Image, Image.id == ImageLabel.image_id), flt, status)
    stmt = stmt.order_by(n.desc(), ImageLabel.label).limit(limit)
    return [(label, int(count)) for label, count in session.execute(stmt)]


def _tag_counts(
    session: Session, flt: SearchFilter, status: str | None, limit: int
) -> list[tuple[str, int]]:
    n = func.count(ImageTag.image_id)
    stmt: Any = select(Tag.name, n).join(ImageTag, ImageTag.tag_id == Tag.id)
    if status is not None or not flt.is_empty():
        stmt = _matching(stmt.join(Image, Image.id == ImageTag.image_id), flt, status)
    stmt = stmt.group_by(Tag.id, Tag.name, Tag.key).order_by(n.desc(), Tag.key).limit(limit)
    return [(name, int(count)) for name, count in session.execute(stmt)]


def facet_counts(
    session: Session,
    flt: SearchFilter,
    status: str | None,
    *,
    labels_limit: int = 20,
    tags_limit: int = TAGS_SHOWN,
) -> FacetCounts:
    """Counts per library, status, camera make and model, label (top ``labels_limit``),
    capture year and tag (top ``tags_limit``), each under every condition but its own:
    one GROUP BY apiece. The tag facet leaves out every tag condition, so its counts say
    what choosing that one tag instead would give."""
    total = session.scalar(_matching(select(func.count()).select_from(Image), flt, status))
    year = func.extract("year", Image.taken_at)
    return FacetCounts(
        total=int(total or 0),
        libraries=_grouped(session, Image.library_id, replace(flt, library_ids=()), status),
        statuses=_grouped(session, Image.status, flt, None),
        camera_makes=_grouped(session, Image.camera_make, replace(flt, camera_make=None), status),
        camera_models=_grouped(
            session, Image.camera_model, replace(flt, camera_model=None), status
        ),
        labels=_label_counts(session, replace(flt, label=None), status, labels_limit),
        years=[
            (int(y), n)
            for y, n in _grouped(
                session, year, replace(flt, taken_after=None, taken_before=None), status
            )
        ],
        tags=_tag_counts(session, replace(flt, tags=()), status, tags_limit),
    )


def matching_ids(
    session: Session, flt: SearchFilter, status: str | None, cap: int
) -> tuple[list[int], int]:
    """Up to ``cap`` ids matching, in library order (newest photo first), and how many match."""
    total = session.scalar(_matching(select(func.count()).select_from(Image), flt, status))
    stmt = _matching(select(Image.id), flt, status).order_by(*LIBRARY_ORDER).limit(cap)
    return list(session.scalars(stmt)), int(total or 0)


@dataclass
class Adjacent:
    """An image's neighbours in library order under a filter (None at either end), and
    its 1-based position among the ``total`` matching (0 when it does not match)."""

    previous: int | None
    next: int | None
    position: int
    total: int


def _before(taken: Any, image_id: int) -> ColumnElement[bool]:
    """Rows shown before (taken, id) in :data:`LIBRARY_ORDER`."""
    if taken is None:
        return or_(Image.taken_at.is_not(None), Image.id > image_id)
    return or_(Image.taken_at > taken, and_(Image.taken_at == taken, Image.id > image_id))


def _after(taken: Any, image_id: int) -> ColumnElement[bool]:
    """Rows shown after (taken, id) in :data:`LIBRARY_ORDER`."""
    if taken is None:
        return and_(Image.taken_at.is_(None), Image.id < image_id)
    return or_(
        Image.taken_at < taken,
        and_(Image.taken_at == taken, Image.id < image_id),
        Image.taken_at.is_(None),
    )


def adjacent(session: Session, flt: SearchFilter, status: str | None, image: Image) -> Adjacent:
    """The previous and next image around ``image`` in the grid's order (keyset queries, so
    the cost does not grow with the image's position)."""
    taken, iid = image.taken_at, image.id
    prev_stmt = _matching(select(Image.id), flt, status).where(_before(taken, iid))
    prev_stmt = prev_stmt.order_by(Image.taken_at.asc().nulls_first(), Image.id.asc()).limit(1)
    next_stmt = _matching(select(Image.id), flt, status).where(_after(taken, iid))
    next_stmt = next_stmt.order_by(*LIBRARY_ORDER).limit(1)
    count = select(func.count()).select_from(Image)
    total = int(session.scalar(_matching(count, flt, status)) or 0)
    here = _matching(count.where(Image.id == iid), flt, status)
    position = 0
    if session.scalar(here):
        position = 1 + int(
            session.scalar(_matching(count, flt, status).where(_before(taken, iid))) or 0
        )
    return Adjacent(
        previous=session.scalar(prev_stmt),
        next=session.scalar(next_stmt),
        position=position,
        total=total,
    )


def space_counts(session: Session) -> list[tuple[Space, int]]:
    """Every vector space with the number of images holding a vector in it, oldest first."""
    n = (
        select(func.count())
        .select_from(ImageVector)
        .where(ImageVector.space_id == Space.id)
        .scalar_subquery()
    )
    return [
        (space, int(count)) for space, count in session.execute(select(Space, n).order_by(Space.id))
    ]
