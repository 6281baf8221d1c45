"""Bodies of similar search and classification.

A hit is the search service's own :class:`~vitdex.search.results.Hit`, serialised as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitdex.search.results import Classification, Hit, LabelScore

__all__ = ["Classification", "Hit", "LabelScore", "SimilarOut"]


@dataclass
class SimilarOut:
    """Neighbours of one query, one page of them."""

    query: str
    image_id: int | None
    space: str
    k: int
    offset: int
    hits: list[Hit]
