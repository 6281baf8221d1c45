"""Facet counts, matching ids, grid neighbours and vector spaces, each read in a session
of its own (callers hold a session factory, as with :mod:`vitdex.search.catalog`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from vitdex.db import facets, repo
from vitdex.db.facets import Adjacent, FacetCounts
from vitdex.filters import SearchFilter

__all__ = ["Adjacent", "FacetCounts", "SpaceCount", "adjacent", "counts", "ids", "spaces"]


@dataclass
class SpaceCount:
    """A vector space and how many images have a vector in it (served as it is)."""

    name: str
    dim: int
    metric: str
    model_id: str
    layer: str
    count: int


def counts(
    sessions: sessionmaker[Session], flt: SearchFilter, status: str | None, labels_limit: int
) -> tuple[FacetCounts, dict[int, str]]:
    """Facet counts under ``flt`` (see :func:`vitdex.db.facets.facet_counts`), and each
    library's folder by id (a sidebar names libraries by their folder)."""
    with sessions() as session:
        found = facets.facet_counts(session, flt, status, labels_limit=labels_limit)
        roots = {lib.id: lib.root for lib in repo.list_libraries(session)}
    return found, roots


def ids(
    sessions: sessionmaker[Session], flt: SearchFilter, status: str | None, cap: int
) -> tuple[list[int], int]:
    """Up to ``cap`` matching ids in library order, and how many match in all."""
    with sessions() as session:
        return facets.matching_ids(session, flt, status, cap)


def adjacent(
    sessions: sessionmaker[Session], image_id: int, flt: SearchFilter, status: str | None
) -> Adjacent:
    """The images before and after ``image_id`` in the grid's order; NotFoundError for an
    unknown id."""
    with sessions() as session:
        image = repo.get_image(session, image_id)
        return facets.adjacent(session, flt, status, image)


def spaces(sessions: sessionmaker[Session]) -> list[SpaceCount]:
    """Every vector space of the catalog with its vector count."""
    with sessions() as session:
        return [
            SpaceCount(s.name, s.dim, s.metric, s.model_id, s.layer, n)
            for s, n in facets.space_counts(session)
        ]
