"""Bodies of saved searches: a similarity query kept by name, and its answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from vitdex.api.schemas.base import FromDict

__all__ = [
    "SavedFilter",
    "SavedQueryOut",
    "SavedSearchDeleted",
    "SavedSearchIn",
    "SavedSearchOut",
    "SavedSearchesOut",
]


@dataclass
class SavedFilter(FromDict):
    """Metadata conditions, named like the query parameters of ``POST /api/v1/similar``."""

    library_id: list[int] = field(default_factory=list)
    folder: str | None = None
    #: ISO date or date-time (inclusive).
    taken_after: str | None = None
    #: ISO date or date-time (exclusive).
    taken_before: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    label: str | None = None
    #: Tags a photo must carry, every one.
    tag: list[str] = field(default_factory=list)
    hide_duplicates: bool = False
    #: Labels a head put on the photo, each HEAD:LABEL, every one.
    head_label: list[str] = field(default_factory=list)


@dataclass
class SavedQueryOut(FromDict):
    """What a saved search runs: its examples as ONE query (see ``POST /api/v1/similar``)."""

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"filter": SavedFilter}

    image_ids: list[int]
    negative_ids: list[int]
    negative_weight: float
    min_score: float | None
    #: Page size; null (with a min_score): every hit above the cut-off.
    k: int | None
    space: str | None
    filter: SavedFilter


@dataclass
class SavedSearchIn:
    """A query to save by name. Examples are catalog ids only: an uploaded photo cannot be
    saved (index it first, then use its id)."""

    name: str
    #: Positive examples (at least one).
    image_ids: list[int]
    negative_ids: list[int] = field(default_factory=list)
    negative_weight: float = 0.5
    min_score: float | None = None
    k: int | None = 10
    space: str | None = None
    filter: SavedFilter = field(default_factory=SavedFilter)
    #: Overwrite a saved search of the same name instead of answering 409.
    replace: bool = False


@dataclass
class SavedSearchOut(FromDict):
    """A saved search."""

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"query": SavedQueryOut}

    id: int
    name: str
    query: SavedQueryOut
    created_at: str | None
    updated_at: str | None


@dataclass
class SavedSearchesOut:
    """Every saved search, by name."""

    saved_searches: list[SavedSearchOut]


@dataclass
class SavedSearchDeleted(FromDict):
    """A deleted saved search (the photos are not touched)."""

    id: int
    name: str
    deleted: bool
