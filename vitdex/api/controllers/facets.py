"""Facet counts and id lists for the browsing filters, grid neighbours, vector spaces.

What the library page's sidebar, "select all matching", a photo's previous/next and the
space pickers read; every count is one SQL GROUP BY, so they stay fast on a large catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import Parameter
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.controllers.search import filter_dependency
from vitdex.api.schemas.facets import (
    AdjacentOut,
    FacetsOut,
    ImageIdsOut,
    SpacesOut,
)
from vitdex.config import Settings
from vitdex.db.models import INT64_MAX, ImageStatus
from vitdex.filters import SearchFilter
from vitdex.search import facets

#: Most ids one ``/image-ids`` answer holds.
MAX_IDS = 100_000

ImageId = Annotated[int, Parameter(ge=1, le=INT64_MAX, description="Catalog image id")]
Status = Annotated[
    ImageStatus | None, Parameter(description="Only images with this indexing status")
]


class FacetsController(Controller):
    """``/api/v1/facets``, ``/api/v1/image-ids``, ``/api/v1/images/{id}/adjacent``,
    ``/api/v1/spaces``."""

    path = "/"
    tags: Sequence[str] = ["images"]
    dependencies = filter_dependency

    @get(
        "/facets",
        sync_to_thread=True,
        operation_id="countFacets",
        summary="Count images per filter value",
        description=(
            "Images per library, status, camera make, camera model, label (the most common "
            "``labels_limit``), capture year and tag (the most common 100) under the filters, "
            "each facet leaving out its own filter (so the counts say what choosing another "
            "value would give)."
        ),
    )
    def facets(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        flt: NamedDependency[SearchFilter],
        status: Status = None,
        labels_limit: Annotated[int, Parameter(ge=1, le=1000)] = 20,
    ) -> FacetsOut:
        """Counts per filter value, each facet under every filter but its own."""
        found, roots = facets.counts(sessions, flt, status.value if status else None, labels_limit)
        return FacetsOut.of(found, roots)

    @get(
        "/image-ids",
        sync_to_thread=True,
        operation_id="listImageIds",
        summary="List the ids of the images matching the filters",
        description=(
            f"Ids in library order (newest photo first), at most ``limit`` (up to {MAX_IDS}); "
            "``truncated`` says when more match."
        ),
    )
    def image_ids(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        flt: NamedDependency[SearchFilter],
        status: Status = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_IDS)] = MAX_IDS,
    ) -> ImageIdsOut:
        """Ids matching the filters, capped, with the total and whether the cap cut it."""
        ids, total = facets.ids(sessions, flt, status.value if status else None, limit)
        return ImageIdsOut(ids=ids, total=total, truncated=total > len(ids))

    @get(
        "/images/{image_id:int}/adjacent",
        sync_to_thread=True,
        operation_id="getAdjacentImages",
        summary="Get the images before and after one in the library order",
        description=(
            "The previous and next image in the library grid's order (newest photo first) "
            "under the filters, and the image's position there (0 when it does not match)."
        ),
    )
    def adjacent(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        flt: NamedDependency[SearchFilter],
        image_id: ImageId,
        status: Status = None,
    ) -> AdjacentOut:
        """The neighbours of one image in the grid's order under the filters."""
        found = facets.adjacent(sessions, image_id, flt, status.value if status else None)
        return AdjacentOut.of(image_id, found)

    @get(
        "/spaces",
        sync_to_thread=True,
        operation_id="listSpaces",
        summary="List the vector spaces",
        description="Every vector space of the catalog with its dimension and vector count.",
    )
    def spaces(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        settings: NamedDependency[Settings],
    ) -> SpacesOut:
        """Every vector space with its vector count, and the one searches use by default."""
        found = facets.spaces(sessions)
        configured = settings.model.spaces
        return SpacesOut(spaces=found, default=configured[0] if configured else None)
