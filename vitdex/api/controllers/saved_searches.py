"""Similarity queries saved by name: save, list, show, delete, run."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import anyio.to_thread
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from litestar.types import Guard

from vitdex.api.controllers.search import Offset, provide_filter, similar_out
from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, NotFound, Unavailable
from vitdex.api.schemas import SimilarOut
from vitdex.api.schemas.saved_searches import (
    SavedSearchDeleted,
    SavedSearchesOut,
    SavedSearchIn,
    SavedSearchOut,
)
from vitdex.api.validation import json_content_type
from vitdex.db.models import INT64_MAX

if TYPE_CHECKING:
    from vitdex.search.saved import SavedSearches

Id = Annotated[int, PathParameter(ge=1, le=INT64_MAX, description="Saved search id")]
RunK = Annotated[
    int | None,
    Parameter(ge=1, le=1000, description="Hits per page (default: the saved k, else 10)"),
]


def _saved(services: Services) -> SavedSearches:
    """The saved searches of the app's catalog (imported here: the search service's
    module loads the model code, which the app loads on first use only)."""
    from vitdex.search.saved import SavedSearches

    return SavedSearches(services.search)


def _save(services: Services, data: SavedSearchIn) -> SavedSearchOut:
    """Save the body's query, its filter checked like ``POST /api/v1/similar``'s (blocking)."""
    f = data.filter
    flt = provide_filter(
        library_id=f.library_id,
        folder=f.folder,
        taken_after=f.taken_after,
        taken_before=f.taken_before,
        camera_make=f.camera_make,
        camera_model=f.camera_model,
        label=f.label,
        tag=f.tag,
        hide_duplicates=f.hide_duplicates,
        head_label=f.head_label,
    )
    saved, _ = _saved(services).save(
        data.name,
        image_ids=data.image_ids,
        negative_ids=data.negative_ids,
        negative_weight=data.negative_weight,
        min_score=data.min_score,
        k=data.k,
        space=data.space,
        filter=flt,
        replace=data.replace,
    )
    return SavedSearchOut.of(saved)


class SavedSearchesController(Controller):
    """``/api/v1/saved-searches``: Similarity queries saved by name."""

    path = "/saved-searches"
    tags: Sequence[str] = ["saved-searches"]
    guards: Sequence[Guard] = [json_content_type]

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listSavedSearches",
        summary="List saved searches",
        description="Every saved search, by name.",
    )
    def list_all(self, services: NamedDependency[Services]) -> SavedSearchesOut:
        """Every saved search, by name."""
        return SavedSearchesOut([SavedSearchOut.of(s) for s in _saved(services).list()])

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        sync_to_thread=True,
        raises=[NotFound, Conflict],
        operation_id="saveSearch",
        summary="Save a similarity query by name",
        description=(
            "Examples (catalog ids only: an uploaded photo cannot be saved, index it first), "
            "filters, space, k and min_score under a name. A name already taken is a 409 "
            "unless ``replace`` is true."
        ),
    )
    def create(
        self, data: JSONBody[SavedSearchIn], services: NamedDependency[Services]
    ) -> SavedSearchOut:
        """Save a similarity query by name (409 for a taken name unless ``replace``)."""
        return _save(services, data)

    @get(
        "/{search_id:int}",
        sync_to_thread=True,
        raises=[NotFound],
        operation_id="getSavedSearch",
        summary="Show a saved search",
        description="One saved search and the query it runs.",
    )
    def show(self, services: NamedDependency[Services], search_id: Id) -> SavedSearchOut:
        """One saved search and the query it runs."""
        return SavedSearchOut.of(_saved(services).get(search_id))

    @delete(
        "/{search_id:int}",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        raises=[NotFound],
        operation_id="deleteSavedSearch",
        summary="Delete a saved search",
        description="Forget a saved search; the photos are not touched.",
    )
    def remove(self, services: NamedDependency[Services], search_id: Id) -> SavedSearchDeleted:
        """Forget a saved search; the photos are not touched."""
        gone = _saved(services).delete(search_id)
        return SavedSearchDeleted(gone["id"], gone["name"], True)

    @post(
        "/{search_id:int}/run",
        status_code=HTTP_200_OK,
        raises=[NotFound, Conflict, Unavailable],
        operation_id="runSavedSearch",
        summary="Run a saved search",
        description=(
            "One page of the saved query's hits against today's catalog, answered like "
            "``POST /api/v1/similar``. An example photo that has left the catalog is a 404 "
            "naming its id."
        ),
    )
    async def run(
        self,
        services: NamedDependency[Services],
        search_id: Id,
        k: RunK = None,
        offset: Offset = 0,
    ) -> SimilarOut:
        """One page of the saved query's hits, answered like ``POST /api/v1/similar``."""
        return await anyio.to_thread.run_sync(
            functools.partial(_run, services, search_id, k, offset)
        )


def _run(services: Services, search_id: int, k: int | None, offset: int) -> SimilarOut:
    """Run a saved search (blocking: call in a thread)."""
    query, result = _saved(services).run(search_id, k=k, offset=offset)
    notes = services.search.filter_misses(query.filter) if not result.hits else []
    size = k if k is not None else query.k or 10
    return similar_out(result, k=size, offset=offset, min_score=query.min_score, notes=notes)
