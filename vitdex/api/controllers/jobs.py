"""Libraries, jobs and clusters: the long-running side of the API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from litestar.types import Guard
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, Forbidden, NotFound, Unavailable
from vitdex.api.schemas import (
    ClusterRunDetail,
    ClusterRunOut,
    ClusterRunsPage,
    JobOut,
    JobQueued,
    JobsPage,
    LibrariesOut,
    LibraryDeleted,
    LibraryOut,
    LibraryQueued,
)
from vitdex.api.schemas.filters import FilterIn, filter_params
from vitdex.api.validation import json_content_type
from vitdex.config import Settings
from vitdex.db.models import INT64_MAX
from vitdex.errors import ConfigError
from vitdex.search import catalog

Id = Annotated[int, PathParameter(ge=1, le=INT64_MAX)]
Offset = Annotated[int, QueryParameter(ge=0, le=INT64_MAX)]


@dataclass
class LibraryIn:
    """A folder to index; it must lie inside VITDEX_ALLOWED_ROOTS."""

    path: str


@dataclass
class ScanIn:
    """Options of a rescan."""

    reembed: bool = False


@dataclass
class ClusterIn:
    """What to cluster: a space, k (a number or "auto"), an optional filter."""

    space: str | None = None
    k: int | Literal["auto"] = "auto"
    method: Literal["kmeans", "hdbscan"] = "kmeans"
    seed: int = 0
    filter: FilterIn | None = None


class LibrariesController(Controller):
    """``/api/v1/libraries``: register folders and index them as jobs."""

    path = "/libraries"
    tags: Sequence[str] = ["libraries"]
    guards: Sequence[Guard] = [json_content_type]

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[Forbidden, NotFound, Unavailable],
        operation_id="addLibrary",
        summary="Register and index a library",
        description=(
            "Register a library (a folder inside the allowed roots) and enqueue its indexing. 503"
            " when the job queue (Redis) is down: the job stays queued and is submitted when "
            "Redis is back (by the recovery sweep, or by this same request repeated)."
        ),
    )
    def add(
        self,
        data: JSONBody[LibraryIn],
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
    ) -> LibraryQueued:
        """Register a library (a folder inside the allowed roots) and enqueue its indexing.

        503 when the job queue (Redis) is down: the job stays queued and is submitted
        when Redis is back (by the recovery sweep, or by this same request repeated)."""
        from vitdex.indexer.libraries import add_library

        library, job = add_library(settings, sessions, services.queue, data.path)
        return LibraryQueued(library=LibraryOut.of(library), job=JobOut.of(job))

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listLibraries",
        summary="List libraries",
        description="Every library with its image counts.",
    )
    def list_all(self, sessions: NamedDependency[sessionmaker[Session]]) -> LibrariesOut:
        """Every library with its image counts."""
        from vitdex.indexer.libraries import list_libraries

        return LibrariesOut(libraries=[LibraryOut.of(lib) for lib in list_libraries(sessions)])

    @get(
        "/{library_id:int}",
        sync_to_thread=True,
        operation_id="getLibrary",
        summary="Get one library",
        description="One library with its image counts.",
    )
    def get_one(
        self, sessions: NamedDependency[sessionmaker[Session]], library_id: Id
    ) -> LibraryOut:
        """One library with its image counts."""
        from vitdex.indexer.libraries import get_library

        return LibraryOut.of(get_library(sessions, library_id))

    @post(
        "/{library_id:int}/scan",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[Unavailable],
        operation_id="scanLibrary",
        summary="Rescan a library",
        description=(
            "Enqueue a rescan (returns the running one if a scan is already queued or running; "
            "one whose process died is recovered and queued again instead)."
        ),
    )
    def scan(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        library_id: Id,
        data: JSONBody[ScanIn | None] = None,
    ) -> JobQueued:
        """Enqueue a rescan (returns the running one if a scan is already queued or running;
        one whose process died is recovered and queued again instead)."""
        from vitdex.indexer.libraries import scan_library

        reembed = data.reembed if data else False
        job = scan_library(
            sessions,
            services.queue,
            library_id,
            reembed=reembed,
            stale_after_s=settings.jobs.job_stale_after_s,
        )
        return JobQueued(job=JobOut.of(job))

    @delete(
        "/{library_id:int}",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        raises=[Conflict],
        operation_id="deleteLibrary",
        summary="Forget a library",
        description="Forget a library: rows and vectors are removed, the photos are not touched.",
    )
    def remove(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        library_id: Id,
    ) -> LibraryDeleted:
        """Forget a library: rows and vectors are removed, the photos are not touched."""
        from vitdex.indexer.libraries import delete_library

        return LibraryDeleted.of(delete_library(settings, sessions, library_id))


class JobsController(Controller):
    """``/api/v1/jobs``: state, progress, counts, ETA and cancel."""

    path = "/jobs"
    tags: Sequence[str] = ["jobs"]

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listJobs",
        summary="List jobs",
        description="Jobs, newest first (jobs whose process died are recovered first).",
    )
    def list_all(
        self,
        services: NamedDependency[Services],
        # "state" is a name Litestar reserves for the app state; the query key stays "state".
        job_state: Annotated[
            str | None, QueryParameter(name="state", description="queued, running, ...")
        ] = None,
        kind: Annotated[str | None, QueryParameter(description="index or cluster")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Offset = 0,
    ) -> JobsPage:
        """Jobs, newest first (jobs whose process died are recovered first)."""
        rows, total = services.list_jobs(state=job_state, kind=kind, limit=limit, offset=offset)
        return JobsPage(
            total=total, limit=limit, offset=offset, jobs=[JobOut.of(job) for job in rows]
        )

    @get(
        "/{job_id:int}",
        sync_to_thread=True,
        operation_id="getJob",
        summary="Get one job",
        description="One job: state, progress, counts, ETA, error.",
    )
    def get_one(self, services: NamedDependency[Services], job_id: Id) -> JobOut:
        """One job: state, progress, counts, ETA, error."""
        return JobOut.of(services.get_job(job_id))

    @delete(
        "/{job_id:int}",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[Conflict],
        operation_id="cancelJob",
        summary="Cancel a job",
        description=(
            "Ask the job to stop; it stops at its next batch and leaves the catalog consistent. A"
            " queued job, or one whose process died, is cancelled at once; a finished one "
            "(succeeded, failed or cancelled) is a 409 naming its state."
        ),
    )
    def cancel(self, services: NamedDependency[Services], job_id: Id) -> JobOut:
        """Ask the job to stop; it stops at its next batch and leaves the catalog consistent.

        A queued job, or one whose process died, is cancelled at once; a finished one
        (succeeded, failed or cancelled) is a 409 naming its state."""
        return JobOut.of(services.cancel_job(job_id))


class ClustersController(Controller):
    """``/api/v1/clusters``: cluster a space as a job, then browse the clusters."""

    path = "/clusters"
    tags: Sequence[str] = ["clusters"]
    guards: Sequence[Guard] = [json_content_type]

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[NotFound, Unavailable],
        operation_id="createClusterRun",
        summary="Cluster a vector space",
        description="Enqueue a clustering of a space; the job's counts name the run id when done.",
    )
    def create(
        self,
        data: JSONBody[ClusterIn],
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
    ) -> JobQueued:
        """Enqueue a clustering of a space; the job's counts name the run id when done."""
        if isinstance(data.k, int) and not 2 <= data.k <= 1000:
            raise ConfigError('k must be between 2 and 1000, or "auto"')
        if not 0 <= data.seed < 2**32:
            raise ConfigError("seed must be between 0 and 2**32 - 1")
        params = {
            "k": data.k,
            "method": data.method,
            "seed": data.seed,
            "filter": filter_params(data.filter),
        }
        job = catalog.queue_clustering(sessions, data.space or settings.model.spaces[0], params)
        services.queue.submit(job["id"], kind="cluster")
        return JobQueued(job=JobOut.of(job))

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listClusterRuns",
        summary="List clustering runs",
        description="Finished clustering runs, newest first.",
    )
    def list_runs(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        space: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Offset = 0,
    ) -> ClusterRunsPage:
        """Finished clustering runs, newest first."""
        runs, total = catalog.cluster_runs(sessions, space=space, limit=limit, offset=offset)
        return ClusterRunsPage(total=total, runs=[ClusterRunOut.of(run) for run in runs])

    @get(
        "/{run_id:int}",
        sync_to_thread=True,
        operation_id="getClusterRun",
        summary="Get a clustering run's clusters",
        description="Clusters of a run with size, medoid images and a page of members.",
    )
    def get_run(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        run_id: Id,
        members_limit: Annotated[int, QueryParameter(ge=0, le=1000)] = 20,
        members_offset: Offset = 0,
        cluster: Annotated[int | None, QueryParameter(ge=-1, le=INT64_MAX)] = None,
    ) -> ClusterRunDetail:
        """Clusters of a run with size, medoid images and a page of members."""
        run = catalog.cluster_run(
            sessions,
            run_id,
            members_limit=members_limit,
            members_offset=members_offset,
            label=cluster,
        )
        return ClusterRunDetail.of(run)
