"""Bodies of the tag routes: tags with counts, tagging photos by id or by filter, renames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from vitdex.api.schemas.filters import FilterIn
from vitdex.api.schemas.search import FilterNote
from vitdex.db.tags import TagCount

__all__ = [
    "TagAdded",
    "TagOut",
    "TagPhotosIn",
    "TagRemoved",
    "TagRenameIn",
    "TagRenamed",
    "TagsOut",
]


@dataclass
class TagOut:
    """A tag and how many photos carry it."""

    id: int
    #: The name as first written (filters and routes take it in any case).
    name: str
    count: int

    @classmethod
    def of(cls, found: TagCount) -> Self:
        """From the catalog's count."""
        return cls(found.id, found.name, found.count)


@dataclass
class TagsOut:
    """Every tag, by name (ignoring case)."""

    tags: list[TagOut]


@dataclass
class TagPhotosIn:
    """Which photos: ``image_ids``, or every photo matching ``filter`` (the same filters
    as similar search and clustering, at least one condition). Exactly one of them."""

    image_ids: list[int] | None = None
    filter: FilterIn | None = None


@dataclass
class TagAdded:
    """A tag after tagging, and how many photos gained it (those that already carried it
    are not counted)."""

    tag: TagOut
    added: int
    #: With a filter that matched nothing because a value no photo has: what was meant.
    filter_notes: list[FilterNote] = field(default_factory=list)


@dataclass
class TagRemoved:
    """A tag after untagging, and how many photos lost it."""

    tag: TagOut
    removed: int
    #: With a filter that matched nothing because a value no photo has: what was meant.
    filter_notes: list[FilterNote] = field(default_factory=list)


@dataclass
class TagRenameIn:
    """The new name. When another tag already has it (in any case), the two merge."""

    name: str


@dataclass
class TagRenamed:
    """The tag after a rename; ``merged`` when it joined a tag that had the name."""

    tag: TagOut
    merged: bool
