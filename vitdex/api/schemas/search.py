"""Bodies of similar search and classification.

A hit is the search service's own :class:`~vitdex.search.results.Hit`, serialised as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from vitdex.filters import FilterMiss
from vitdex.search.results import Classification, Hit, LabelScore

__all__ = ["Classification", "FilterNote", "Hit", "LabelScore", "SimilarOut"]


@dataclass
class FilterNote:
    """A filter value no photo has (so the answer is empty), and values close to it."""

    #: ``camera_make``, ``camera_model`` or ``label``.
    field: str
    value: str
    message: str
    #: Stored values that look like ``value``, closest first.
    close: list[str]
    #: With nothing close: the most common stored values.
    common: list[str]

    @classmethod
    def of(cls, miss: FilterMiss) -> Self:
        """The note for one miss."""
        return cls(miss.field, miss.value, miss.message, list(miss.close), list(miss.common))


@dataclass
class SimilarOut:
    """Neighbours of one query, one page of them."""

    query: str
    image_id: int | None
    space: str
    k: int
    offset: int
    hits: list[Hit]
    #: Set when there are no hits because a filter value matches no photo.
    filter_notes: list[FilterNote] = field(default_factory=list)
    #: The score cut-off asked for (hits score at least this), or null.
    min_score: float | None = None
    #: The ``offset`` of the next page, or null when no hit follows this page (none at
    #: all, or none at or above ``min_score``).
    next_offset: int | None = None
