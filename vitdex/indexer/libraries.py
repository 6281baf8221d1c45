"""Libraries over HTTP: register a folder, (re)scan it as a job, forget it.

Paths must resolve inside VITDEX_ALLOWED_ROOTS; the check runs on the fully resolved path,
so neither ``..`` nor a symlink can climb out of an allowed root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import STALE_AFTER_S, Settings
from vitdex.db import jobs, repo
from vitdex.db.models import JobState, Library
from vitdex.errors import ConfigError, ConflictError, ForbiddenError, NotFoundError
from vitdex.paths import inside


class JobSubmitter(Protocol):
    """The one thing a scan needs of a job queue: running a committed, queued job row.

    vitdex.jobs.queue's queues are such; the indexer sits below them and never imports
    them.
    """

    def submit(self, job_id: int, *, kind: str | None = None) -> None:
        """Run the job row ``job_id`` (of kind ``kind``) some time soon."""


def allowed_folder(settings: Settings, raw: str) -> Path:
    """``raw`` resolved, if it is an existing folder inside an allowed root."""
    roots = settings.api.allowed_roots
    if not roots:
        raise ForbiddenError(
            "no folder may be indexed over HTTP: set VITDEX_ALLOWED_ROOTS to the folders "
            "the API may read"
        )
    path = Path(raw)
    if not raw or not path.is_absolute():
        raise ConfigError(f"path must be an absolute folder path, got {raw!r}")
    try:
        resolved = path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"no such folder: {raw}") from None
    except (OSError, RuntimeError) as exc:  # permission, symlink loop
        raise ForbiddenError(f"cannot use {raw}: {exc}") from None
    if not inside(resolved, roots):
        raise ForbiddenError(f"{raw} is outside the allowed roots (VITDEX_ALLOWED_ROOTS)")
    if not resolved.is_dir():
        raise ConfigError(f"not a folder: {raw}")
    return resolved


def library_dict(lib: Library, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """JSON-ready view of a library."""
    return {
        "id": lib.id,
        "root": lib.root,
        "created_at": lib.created_at.isoformat() if lib.created_at else None,
        "last_scan_at": lib.last_scan_at.isoformat() if lib.last_scan_at else None,
        "images": counts or {},
    }


def _enqueue_scan(
    session: Session,
    queue: JobSubmitter,
    lib: Library,
    *,
    reembed: bool = False,
    stale_after_s: float = STALE_AFTER_S,
) -> dict[str, Any]:
    job, _ = jobs.enqueue_job_row(
        session,
        "index",
        {"paths": [lib.root], "reembed": reembed, "library_id": lib.id},
        dedupe_key=f"index:{lib.id}",
        stale_after_s=stale_after_s,
    )
    session.commit()
    # A scan found queued is submitted again: the queue may have lost it (Redis restarted
    # empty, or down when it was made); a copy the queue still holds is kept.
    # A dead running scan was recovered (queued again) by enqueue_job_row.
    if job.state == JobState.QUEUED:
        queue.submit(job.id, kind="index")
    return jobs.job_to_dict(job)


def add_library(
    settings: Settings, sessions: sessionmaker[Session], queue: JobSubmitter, raw_path: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register the folder (or find the library holding it) and enqueue its scan."""
    folder = allowed_folder(settings, raw_path)
    with sessions() as session:
        lib = repo.library_for(session, str(folder))
        session.commit()
        job = _enqueue_scan(session, queue, lib, stale_after_s=settings.jobs.job_stale_after_s)
        return library_dict(lib), job


def scan_library(
    sessions: sessionmaker[Session],
    queue: JobSubmitter,
    library_id: int,
    *,
    reembed: bool = False,
    stale_after_s: float = STALE_AFTER_S,
) -> dict[str, Any]:
    """Enqueue a scan of a registered library (one at a time per library); a scan
    already queued is submitted again, one whose process died is recovered first."""
    with sessions() as session:
        lib = repo.get_library(session, library_id)
        return _enqueue_scan(session, queue, lib, reembed=reembed, stale_after_s=stale_after_s)


def list_libraries(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Every library with its image counts."""
    with sessions() as session:
        counts = repo.library_counts(session)
        return [library_dict(lib, counts.get(lib.id)) for lib in repo.list_libraries(session)]


def get_library(sessions: sessionmaker[Session], library_id: int) -> dict[str, Any]:
    """One library with its image counts."""
    with sessions() as session:
        lib = repo.get_library(session, library_id)
        return library_dict(lib, repo.library_counts(session).get(lib.id))


def delete_library(
    settings: Settings, sessions: sessionmaker[Session], library_id: int
) -> dict[str, Any]:
    """Forget a library: its rows and vectors go, its photos stay where they are.

    Refused while a scan of it is queued or running; a scan whose process died counts
    only until it is recovered (requeued, or cancelled if its cancel was asked for).
    """
    from vitdex.db.recovery import recover_orphans
    from vitdex.vectors.factory import open_store
    from vitdex.vectors.lease import writing

    with writing(settings), sessions() as session:  # a writer: no repair meanwhile
        lib = repo.get_library(session, library_id)
        recover_orphans(session, stale_after_s=settings.jobs.job_stale_after_s)
        session.commit()
        active, _ = jobs.list_jobs(session, kind="index", state="running")
        queued, _ = jobs.list_jobs(session, kind="index", state="queued")
        if any((job.params or {}).get("library_id") == lib.id for job in [*active, *queued]):
            raise ConflictError(
                f"library {library_id} is being indexed; cancel its job first "
                "(DELETE /api/v1/jobs/{id})"
            )
        root = lib.root
        ids = repo.delete_library(session, lib.id)
        session.flush()
        # Store first, then commit: a crash in between leaves strays that the next
        # start-up check removes, never rows without vectors.
        id_array = np.asarray(ids, dtype=np.int64)
        if len(id_array):
            for space in repo.list_spaces(session):
                store = open_store(settings, space.name, space.dim, space.metric)
                try:
                    store.delete(id_array)
                finally:
                    store.close()
        session.commit()
    return {"id": library_id, "root": root, "images_removed": len(ids)}
