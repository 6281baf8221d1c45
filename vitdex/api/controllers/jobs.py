"""Libraries, jobs and clusters: the long-running side of the API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, Forbidden, NotFound, Unavailable
from vitdex.config import Settings
from vitdex.db import jobs
from vitdex.db.models import INT64_MAX
from vitdex.errors import ConfigError

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
class ClusterFilterIn:
    """The same filters as similar search."""

    library_id: list[int] = field(default_factory=list)
    folder: str | None = None
    taken_after: str | None = None
    taken_before: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    label: str | None = None


@dataclass
class ClusterIn:
    """What to cluster: a space, k (a number or "auto"), an optional filter."""

    space: str | None = None
    k: int | Literal["auto"] = "auto"
    method: Literal["kmeans", "hdbscan"] = "kmeans"
    seed: int = 0
    filter: ClusterFilterIn | None = None


def _filter_params(flt: ClusterFilterIn | None) -> dict[str, Any] | None:
    if flt is None:
        return None
    from datetime import datetime

    out: dict[str, Any] = {}
    for name in ("taken_after", "taken_before"):
        value = getattr(flt, name)
        if value is not None:
            try:
                out[name] = datetime.fromisoformat(value).isoformat()
            except ValueError:
                raise ConfigError(
                    f"{name} must be an ISO date or datetime, got {value!r}"
                ) from None
    if flt.library_id:
        if any(not 1 <= i <= INT64_MAX for i in flt.library_id):
            raise ConfigError(f"filter.library_id must be between 1 and {INT64_MAX}")
        out["library_ids"] = list(flt.library_id)
    if flt.folder:
        out["path_prefix"] = flt.folder.rstrip("/") or "/"
    for name in ("camera_make", "camera_model", "label"):
        if getattr(flt, name) is not None:
            out[name] = getattr(flt, name)
    return out


class LibrariesController(Controller):
    """``/api/v1/libraries``: register folders and index them as jobs."""

    path = "/libraries"
    tags: Sequence[str] = ["libraries"]

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[Forbidden, NotFound, Unavailable],
    )
    def add(
        self,
        data: JSONBody[LibraryIn],
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
    ) -> dict[str, Any]:
        """Register a library (a folder inside the allowed roots) and enqueue its indexing.

        503 when the job queue (Redis) is down: the job stays queued and is submitted
        when Redis is back (by the recovery sweep, or by this same request repeated)."""
        from vitdex.indexer.libraries import add_library

        library, job = add_library(settings, sessions, services.queue, data.path)
        return {"library": library, "job": job}

    @get("/", sync_to_thread=True)
    def list_all(self, sessions: NamedDependency[sessionmaker[Session]]) -> dict[str, Any]:
        """Every library with its image counts."""
        from vitdex.indexer.libraries import list_libraries

        return {"libraries": list_libraries(sessions)}

    @get("/{library_id:int}", sync_to_thread=True)
    def get_one(
        self, sessions: NamedDependency[sessionmaker[Session]], library_id: Id
    ) -> dict[str, Any]:
        """One library with its image counts."""
        from vitdex.indexer.libraries import get_library

        return get_library(sessions, library_id)

    @post(
        "/{library_id:int}/scan",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[Unavailable],
    )
    def scan(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        library_id: Id,
        data: JSONBody[ScanIn | None] = None,
    ) -> dict[str, Any]:
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
        return {"job": job}

    @delete("/{library_id:int}", status_code=HTTP_200_OK, sync_to_thread=True, raises=[Conflict])
    def remove(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        library_id: Id,
    ) -> dict[str, Any]:
        """Forget a library: rows and vectors are removed, the photos are not touched."""
        from vitdex.indexer.libraries import delete_library

        return delete_library(settings, sessions, library_id)


class JobsController(Controller):
    """``/api/v1/jobs``: state, progress, counts, ETA and cancel."""

    path = "/jobs"
    tags: Sequence[str] = ["jobs"]

    @get("/", sync_to_thread=True)
    def list_all(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        # "state" is a name Litestar reserves for the app state; the query key stays "state".
        job_state: Annotated[
            str | None, QueryParameter(name="state", description="queued, running, ...")
        ] = None,
        kind: Annotated[str | None, QueryParameter(description="index or cluster")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Jobs, newest first (jobs whose process died are recovered first)."""
        services.recover_orphans()
        with sessions() as session:
            rows, total = jobs.list_jobs(
                session, state=job_state, kind=kind, limit=limit, offset=offset
            )
            return {
                "total": total,
                "limit": limit,
                "offset": offset,
                "jobs": [jobs.job_to_dict(job) for job in rows],
            }

    @get("/{job_id:int}", sync_to_thread=True)
    def get_one(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        job_id: Id,
    ) -> dict[str, Any]:
        """One job: state, progress, counts, ETA, error."""
        services.recover_orphans()
        with sessions() as session:
            return jobs.job_to_dict(jobs.get_job(session, job_id))

    @delete("/{job_id:int}", status_code=HTTP_202_ACCEPTED, sync_to_thread=True)
    def cancel(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        job_id: Id,
    ) -> dict[str, Any]:
        """Ask the job to stop; it stops at its next batch and leaves the catalog consistent.

        A queued job, or one whose process died, is cancelled at once."""
        with sessions() as session:
            stale = settings.jobs.job_stale_after_s
            job = jobs.request_cancel(session, job_id, stale_after_s=stale)
            session.commit()
            return jobs.job_to_dict(job)


class ClustersController(Controller):
    """``/api/v1/clusters``: cluster a space as a job, then browse the clusters."""

    path = "/clusters"
    tags: Sequence[str] = ["clusters"]

    @post("/", status_code=HTTP_202_ACCEPTED, sync_to_thread=True, raises=[NotFound, Unavailable])
    def create(
        self,
        data: JSONBody[ClusterIn],
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
    ) -> dict[str, Any]:
        """Enqueue a clustering of a space; the job's counts name the run id when done."""
        from vitdex.db import repo

        if isinstance(data.k, int) and not 2 <= data.k <= 1000:
            raise ConfigError('k must be between 2 and 1000, or "auto"')
        if not 0 <= data.seed < 2**32:
            raise ConfigError("seed must be between 0 and 2**32 - 1")
        space = data.space or settings.model.spaces[0]
        with sessions() as session:
            repo.get_space(session, space)  # unknown space: 404 now, not a failed job later
            job, _ = jobs.enqueue_job_row(
                session,
                "cluster",
                {
                    "space": space,
                    "k": data.k,
                    "method": data.method,
                    "seed": data.seed,
                    "filter": _filter_params(data.filter),
                },
            )
            session.commit()
            services.queue.submit(job.id, kind="cluster")
            return {"job": jobs.job_to_dict(job)}

    @get("/", sync_to_thread=True)
    def list_runs(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        space: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Finished clustering runs, newest first."""
        from vitdex.search.cluster import list_cluster_runs

        with sessions() as session:
            runs, total = list_cluster_runs(session, space=space, limit=limit, offset=offset)
            return {"total": total, "runs": runs}

    @get("/{run_id:int}", sync_to_thread=True)
    def get_run(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        run_id: Id,
        members_limit: Annotated[int, QueryParameter(ge=0, le=1000)] = 20,
        members_offset: Offset = 0,
        cluster: Annotated[int | None, QueryParameter(ge=-1, le=INT64_MAX)] = None,
    ) -> dict[str, Any]:
        """Clusters of a run with size, medoid images and a page of members."""
        from vitdex.search.cluster import get_cluster_run

        with sessions() as session:
            return get_cluster_run(
                session,
                run_id,
                members_limit=members_limit,
                members_offset=members_offset,
                cluster=cluster,
            )
