"""2-D maps of a space (PCA, UMAP), computed as jobs and cached.

``POST /api/v1/maps`` always answers 202 with a ``map`` job: when the cached map is still
fresh the job finishes at once with ``counts.reused = true`` (so a page has one flow to
follow). ``GET /api/v1/maps/{space}`` serves only a fresh map: 404 when it was never
computed, 409 when the space's vectors changed since (compute it again); ``GET
/api/v1/maps`` tells which maps exist without either error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED
from litestar.types import Guard
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, NotFound, Unavailable
from vitdex.api.schemas import JobOut, JobQueued
from vitdex.api.schemas.maps import MapIn, MapInfo, MapPoints, MapsOut
from vitdex.api.validation import json_content_type
from vitdex.config import Settings
from vitdex.db.models import INT64_MAX
from vitdex.search import map_cache, projection


class MapsController(Controller):
    """2-D maps of a space (PCA, UMAP), computed as jobs and cached."""

    path = "/maps"
    tags: Sequence[str] = ["maps"]
    guards: Sequence[Guard] = [json_content_type]

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listMaps",
        summary="List maps",
        description=(
            "Every space's map per method: missing, stale (its vectors changed since) or fresh;"
            " and the methods this server computes (umap needs umap-learn)."
        ),
    )
    def list_all(
        self, settings: NamedDependency[Settings], sessions: NamedDependency[sessionmaker[Session]]
    ) -> MapsOut:
        """Every space's map per method, and the methods this server computes."""
        return MapsOut(
            methods=map_cache.available_methods(),
            maps=[MapInfo.of(m) for m in map_cache.list_maps(settings, sessions)],
        )

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[NotFound, Unavailable],
        operation_id="createMap",
        summary="Compute a map of a space",
        description=(
            "Enqueue the 2-D map of a space (or return the job already computing it). When the "
            "cached map is fresh the job ends at once with counts.reused true, unless force."
        ),
    )
    def create(
        self,
        data: JSONBody[MapIn],
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
    ) -> JobQueued:
        """Enqueue the 2-D map of a space (or return the job already computing it)."""
        space = data.space or settings.model.spaces[0]
        job = projection.queue_map(sessions, space, data.method, force=data.force)
        services.queue.submit(job["id"], kind="map")
        return JobQueued(job=JobOut.of(job))

    @get(
        "/{space:str}",
        sync_to_thread=True,
        raises=[NotFound, Conflict],
        operation_id="getMap",
        summary="Get a map's points",
        description=(
            "A fresh map's points: ids, x and y in [0, 1], top label, library and (with "
            "cluster_run) cluster per point. 404 when not computed yet, 409 when stale."
        ),
    )
    def get_one(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        space: Annotated[str, PathParameter(max_length=64)],
        method: Annotated[Literal["pca", "umap"], QueryParameter()] = "pca",
        cluster_run: Annotated[
            int | None, QueryParameter(ge=1, le=INT64_MAX, description="colour by this run")
        ] = None,
    ) -> MapPoints:
        """A fresh map's points (404 when not computed yet, 409 when stale)."""
        cached, keys = projection.map_points(settings, sessions, space, method, cluster_run)
        xy = np.round(projection.display_xy(cached.xy).astype(np.float64), 4)
        return MapPoints(
            space=space,
            method=method,
            computed_at=cached.computed_at,
            ids=cached.ids.tolist(),
            x=xy[:, 0].tolist(),
            y=xy[:, 1].tolist(),
            label=keys["label"],
            label_names=keys["label_names"],
            library_id=keys["library_id"],
            cluster=keys["cluster"],
            cluster_run=cluster_run,
        )
