"""SQL for tags on photos: add and remove in bulk, list with counts, rename, delete.

Bulk writes are single ``INSERT ... SELECT`` / ``DELETE`` statements per chunk of ids (or
one statement for a whole filter), so tagging 100,000 photos never loads their rows.
Inserts skip pairs already present both by ``NOT EXISTS`` (so the row count says how many
photos changed) and by ``ON CONFLICT DO NOTHING`` (so two writers racing on one pair do
not fail); both SQLite and PostgreSQL speak that. Functions take a
:class:`~sqlalchemy.orm.Session` and leave committing to the caller; :class:`TagStore`
runs each operation in a transaction of its own for the API and the CLI.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from vitdex.db.images import where_filter
from vitdex.db.models import INT64_MAX, Image, utcnow
from vitdex.db.review_models import ImageTag, Tag
from vitdex.db.rows import chunks
from vitdex.errors import ConfigError, NotFoundError
from vitdex.filters import SearchFilter, tag_key

__all__ = [
    "MAX_TAG_LENGTH",
    "TagCount",
    "TagStore",
    "add_tag",
    "add_tag_matching",
    "check_images",
    "clean_tag_name",
    "delete_tag",
    "find_tag",
    "get_tag",
    "ids_matching",
    "list_tags",
    "remove_tag",
    "remove_tag_matching",
    "rename_tag",
    "tag_counts",
    "tags_of",
]

#: Longest tag name (the column's width).
MAX_TAG_LENGTH = 128
#: How many unknown ids an error names before "and N more".
_NAMED = 10


@dataclass(frozen=True)
class TagCount:
    """A tag and the number of photos carrying it."""

    id: int
    name: str
    count: int


def clean_tag_name(name: str) -> str:
    """The name as it is stored and shown: spaces trimmed and collapsed (the key ignores
    them too, so "My  dog" and "my dog" are one tag). :class:`ConfigError` for an empty
    name, one longer than :data:`MAX_TAG_LENGTH`, one holding control characters (a
    newline or NUL in a name breaks every list and URL it appears in) or a ``/`` (the API
    names a tag in a URL path, where an encoded ``/`` still splits the path)."""
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise ConfigError(f"a tag name must not contain control characters: {name!r}")
    if "/" in name:
        raise ConfigError(f"a tag name must not contain '/' (URLs name tags in a path): {name!r}")
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ConfigError("a tag name must not be empty")
    if len(cleaned) > MAX_TAG_LENGTH:
        raise ConfigError(f"a tag name is at most {MAX_TAG_LENGTH} characters, got {len(cleaned)}")
    return cleaned


def _insert_ignoring(session: Session, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return insert(table)  # other databases: NOT EXISTS alone keeps it idempotent


def _among(session: Session, column: Any, ids: Sequence[int]) -> Iterator[ColumnElement[bool]]:
    """Conditions "``column`` is one of ``ids``", one per statement to run. PostgreSQL
    takes the whole list as one array parameter (``= ANY(:ids)``: an ``IN`` list of
    thousands of parameters costs it far more to plan than to run); SQLite takes ``IN``
    lists of :data:`~vitdex.db.rows.CHUNK`, below its limit on parameters."""
    if session.get_bind().dialect.name == "postgresql":
        if ids:
            yield column == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(BigInteger)))
        return
    for chunk in chunks(ids):
        yield column.in_(chunk)


def find_tag(session: Session, name: str) -> Tag | None:
    """The tag whose key ``name`` has (any case, any spacing), if there is one."""
    return session.scalar(select(Tag).where(Tag.key == tag_key(name)))


def get_tag(session: Session, name: str) -> Tag:
    """The tag named ``name`` (any case), or :class:`NotFoundError`."""
    found = find_tag(session, name)
    if found is None:
        raise NotFoundError(f"no tag named {name!r}")
    return found


def _ensure_tag(session: Session, name: str) -> Tag:
    """The tag named ``name``, created with this spelling when new."""
    cleaned = clean_tag_name(name)
    key = tag_key(cleaned)
    session.execute(
        _insert_ignoring(session, Tag).values(name=cleaned, key=key, created_at=utcnow())
    )
    return session.scalars(select(Tag).where(Tag.key == key)).one()


def check_images(session: Session, image_ids: Sequence[int]) -> list[int]:
    """``image_ids`` without repeats, in order; :class:`NotFoundError` naming the ids the
    catalog lacks (nothing is changed for a list with one wrong id)."""
    wanted = list(dict.fromkeys(int(i) for i in image_ids))
    bad = [i for i in wanted if not 1 <= i <= INT64_MAX]
    found: set[int] = set()
    for among in _among(session, Image.id, [i for i in wanted if 1 <= i <= INT64_MAX]):
        found.update(session.scalars(select(Image.id).where(among)))
    missing = bad + [i for i in wanted if 1 <= i <= INT64_MAX and i not in found]
    if missing:
        named = ", ".join(str(i) for i in missing[:_NAMED])
        more = f" and {len(missing) - _NAMED} more" if len(missing) > _NAMED else ""
        what = "image" if len(missing) == 1 else "images"
        raise NotFoundError(f"no {what} with id {named}{more}")
    return wanted


def _insert_pairs(session: Session, tag_id: int, images: Select[Any]) -> int:
    """Put the tag on every image ``images`` (a select of ``Image.id``) yields; how many
    did not carry it yet."""
    absent = (
        ~select(ImageTag.image_id)
        .where(ImageTag.image_id == Image.id, ImageTag.tag_id == tag_id)
        .exists()
    )
    rows = images.where(absent).add_columns(
        literal(tag_id, ImageTag.tag_id.type), literal(utcnow(), ImageTag.created_at.type)
    )
    stmt = _insert_ignoring(session, ImageTag).from_select(
        ["image_id", "tag_id", "created_at"], rows
    )
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... SELECT ... ON CONFLICT.
    return len(session.execute(stmt.returning(ImageTag.image_id)).all())


def add_tag(session: Session, name: str, image_ids: Sequence[int]) -> tuple[Tag, int]:
    """Put the tag ``name`` on the images (creating the tag, spelt as given, when new);
    the tag and how many images did not carry it yet. Idempotent."""
    ids = check_images(session, image_ids)
    tag = _ensure_tag(session, name)
    added = 0
    for among in _among(session, Image.id, ids):
        added += _insert_pairs(session, tag.id, select(Image.id).where(among))
    return tag, added


def add_tag_matching(session: Session, name: str, flt: SearchFilter) -> tuple[Tag, int]:
    """Put the tag ``name`` on every image matching ``flt``: one statement, whatever the
    number of images."""
    tag = _ensure_tag(session, name)
    return tag, _insert_pairs(session, tag.id, where_filter(select(Image.id), flt))


def remove_tag(session: Session, name: str, image_ids: Sequence[int]) -> tuple[Tag, int]:
    """Take the tag ``name`` off the images; the tag and how many carried it.

    :class:`NotFoundError` for a tag that does not exist or ids the catalog lacks: a
    typo should not read as "removed from 0 photos".
    """
    tag = get_tag(session, name)
    ids = check_images(session, image_ids)
    removed = 0
    for among in _among(session, ImageTag.image_id, ids):
        stmt = delete(ImageTag).where(ImageTag.tag_id == tag.id, among)
        removed += int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]
    return tag, removed


def remove_tag_matching(session: Session, name: str, flt: SearchFilter) -> tuple[Tag, int]:
    """Take the tag ``name`` off every image matching ``flt``; how many carried it."""
    tag = get_tag(session, name)
    matching = where_filter(select(Image.id), flt)
    stmt = delete(ImageTag).where(ImageTag.tag_id == tag.id, ImageTag.image_id.in_(matching))
    return tag, int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]


def tag_counts(session: Session, tag_ids: Sequence[int] | None = None) -> list[TagCount]:
    """Tags with their photo counts (all of them, or those of ``tag_ids``), by name."""
    n = func.count(ImageTag.image_id)
    stmt = (
        select(Tag.id, Tag.name, n)
        .outerjoin(ImageTag, ImageTag.tag_id == Tag.id)
        .group_by(Tag.id, Tag.name, Tag.key)
        .order_by(Tag.key)
    )
    if tag_ids is not None:
        stmt = stmt.where(Tag.id.in_(list(tag_ids)))
    return [TagCount(int(i), name, int(c)) for i, name, c in session.execute(stmt)]


def list_tags(session: Session) -> list[TagCount]:
    """Every tag with the number of photos carrying it, by name (ignoring case)."""
    return tag_counts(session)


def _count_of(session: Session, tag: Tag) -> TagCount:
    return tag_counts(session, [tag.id])[0]


def rename_tag(session: Session, old: str, new: str) -> tuple[TagCount, bool]:
    """Rename a tag; when another tag already has the new name's key, move every photo
    onto that one and delete the old (a merge). The tag afterwards, and whether it was a
    merge. Renaming to another spelling of the same key just changes the spelling."""
    tag = get_tag(session, old)
    cleaned = clean_tag_name(new)
    target = find_tag(session, cleaned)
    if target is None or target.id == tag.id:
        session.execute(
            update(Tag).where(Tag.id == tag.id).values(name=cleaned, key=tag_key(cleaned))
        )
        session.expire(tag)
        return _count_of(session, tag), False
    carriers = select(ImageTag.image_id).where(ImageTag.tag_id == tag.id)
    _insert_pairs(session, target.id, select(Image.id).where(Image.id.in_(carriers)))
    session.execute(delete(ImageTag).where(ImageTag.tag_id == tag.id))
    session.execute(delete(Tag).where(Tag.id == tag.id))
    return _count_of(session, target), True


def delete_tag(session: Session, name: str) -> int:
    """Delete a tag and take it off every photo; how many photos carried it."""
    tag = get_tag(session, name)
    removed = session.execute(delete(ImageTag).where(ImageTag.tag_id == tag.id)).rowcount  # type: ignore[attr-defined]
    session.execute(delete(Tag).where(Tag.id == tag.id))
    return int(removed or 0)


def tags_of(session: Session, image_ids: Sequence[int]) -> dict[int, list[str]]:
    """The tag names of each image (by name, ignoring case); images without tags are
    left out."""
    found: dict[int, list[str]] = {}
    for among in _among(session, ImageTag.image_id, list(image_ids)):
        stmt = (
            select(ImageTag.image_id, Tag.name)
            .join(Tag, Tag.id == ImageTag.tag_id)
            .where(among)
            .order_by(ImageTag.image_id, Tag.key)
        )
        for image_id, name in session.execute(stmt):
            found.setdefault(image_id, []).append(name)
    return found


def ids_matching(session: Session, flt: SearchFilter) -> list[int]:
    """Ids of every image matching ``flt``, ascending (what "tag all matching" covers)."""
    return list(session.scalars(where_filter(select(Image.id), flt).order_by(Image.id)))


class TagStore:
    """The tag operations over a session factory, each in one transaction of its own:
    what the API's handlers and the CLI's commands hold, so neither writes SQL."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def all(self) -> list[TagCount]:
        """Every tag with its photo count."""
        with self.sessions() as session:
            return list_tags(session)

    def get(self, name: str) -> TagCount:
        """One tag with its photo count, or :class:`NotFoundError`."""
        with self.sessions() as session:
            return _count_of(session, get_tag(session, name))

    def add(
        self, name: str, image_ids: Sequence[int] | None = None, flt: SearchFilter | None = None
    ) -> tuple[TagCount, int]:
        """Tag the given images, or every image matching ``flt``; the tag and how many
        photos gained it."""
        with self.sessions.begin() as session:
            if flt is not None:
                tag, n = add_tag_matching(session, name, flt)
            else:
                tag, n = add_tag(session, name, image_ids or ())
            return _count_of(session, tag), n

    def remove(
        self, name: str, image_ids: Sequence[int] | None = None, flt: SearchFilter | None = None
    ) -> tuple[TagCount, int]:
        """Untag the given images, or every image matching ``flt``; the tag and how
        many photos lost it."""
        with self.sessions.begin() as session:
            if flt is not None:
                tag, n = remove_tag_matching(session, name, flt)
            else:
                tag, n = remove_tag(session, name, image_ids or ())
            return _count_of(session, tag), n

    def rename(self, old: str, new: str) -> tuple[TagCount, bool]:
        """Rename (or merge) a tag; see :func:`rename_tag`."""
        with self.sessions.begin() as session:
            return rename_tag(session, old, new)

    def delete(self, name: str) -> int:
        """Delete a tag; how many photos carried it."""
        with self.sessions.begin() as session:
            return delete_tag(session, name)

    def of_images(self, image_ids: Sequence[int]) -> dict[int, list[str]]:
        """The tag names of each image (images without tags left out)."""
        with self.sessions() as session:
            return tags_of(session, image_ids)

    def of_image(self, image_id: int) -> list[str]:
        """The tag names of one image; :class:`NotFoundError` for an unknown id."""
        with self.sessions() as session:
            check_images(session, [image_id])
            return tags_of(session, [image_id]).get(image_id, [])
