"""Every SQL statement about jobs: enqueueing, claiming, progress, cancelling, reading.

A job's state, progress and error live in the ``jobs`` table, never only in the queue
backend, so they survive a Redis restart and read the same whichever queue ran the job.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import STALE_AFTER_S
from vitdex.db.models import ERROR_MAX, CatalogInfo, Job, JobState, iso, utcnow
from vitdex.db.recovery import is_orphan, recover_orphans
from vitdex.db.training import follow_job
from vitdex.errors import ConfigError, NotFoundError

#: States a job never leaves.
FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: States in which a job still holds (or will do) its work; dedupe looks only at these.
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})


class JobCancelled(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a job function when its row asks it to stop.

    Here, below the layers that do the work (the clustering in :mod:`vitdex.search`
    raises it), so they need not import the job runner that catches it."""


def enqueue_job_row(
    session: Session,
    kind: str,
    params: Mapping[str, Any],
    *,
    dedupe_key: str | None = None,
    stale_after_s: float = STALE_AFTER_S,
) -> tuple[Job, bool]:
    """A new queued job row, or the active one with the same ``dedupe_key``.

    Returns ``(job, created)``; ``created`` is False when a queued or running job with
    the same key already exists (re-enqueueing the same scan does not duplicate work).
    Orphaned running jobs are recovered first, so the one found is never a dead job: a
    found job that reads ``queued`` must be submitted again (its queue may have lost it).
    The key is stored as ``params["dedupe_key"]``. The caller commits, then submits.
    """
    if dedupe_key is not None:
        recover_orphans(session, stale_after_s=stale_after_s)
        active = session.scalars(
            select(Job)
            .where(Job.kind == kind, Job.state.in_([s.value for s in ACTIVE_STATES]))
            .order_by(Job.id)
        )
        for job in active:
            # JSON columns compare differently on each backend; filter in Python instead
            # (there are only ever a handful of active jobs).
            if (job.params or {}).get("dedupe_key") == dedupe_key:
                return job, False
    stored = dict(params)
    if dedupe_key is not None:
        stored["dedupe_key"] = dedupe_key
    job = Job(kind=kind, params=stored, state=JobState.QUEUED, done=0, counts={})
    session.add(job)
    session.flush()
    return job, True


def get_job(session: Session, job_id: int) -> Job:
    """One job, or :class:`NotFoundError`."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}")
    return job


def create_foreground_job(session: Session, kind: str, params: Mapping[str, Any]) -> Job:
    """A new job row, running from now in this process (a foreground run).

    Its owner (host, pid) is recorded, marked foreground: should the process die, the
    recovery sweep closes the row as interrupted instead of leaving it running for ever
    (no queue would run it again; the next run of the command resumes the work).
    """
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "foreground": True}
    now = utcnow()
    job = Job(
        kind=kind,
        params={**params, "owner": owner},
        state=JobState.RUNNING,
        started_at=now,
        heartbeat_at=now,
    )
    session.add(job)
    session.flush()
    return job


def update_job(session: Session, job_id: int, **values: Any) -> None:
    """Update a job's progress, counts or state."""
    session.execute(update(Job).where(Job.id == job_id).values(**values))


def finish_job(session: Session, job_id: int, state: JobState, error: str | None = None) -> None:
    """Close a job."""
    update_job(session, job_id, state=state, error=error, finished_at=utcnow())


def list_jobs(
    session: Session,
    *,
    state: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """Jobs newest first, optionally of one state and kind, with the total that match."""
    if state is not None and state not in {s.value for s in JobState}:
        known = ", ".join(s.value for s in JobState)
        raise ConfigError(f"unknown job state {state!r} (one of: {known})")
    stmt = select(Job)
    count = select(func.count()).select_from(Job)
    if state is not None:
        stmt, count = stmt.where(Job.state == state), count.where(Job.state == state)
    if kind is not None:
        stmt, count = stmt.where(Job.kind == kind), count.where(Job.kind == kind)
    total = int(session.scalar(count) or 0)
    jobs = list(session.scalars(stmt.order_by(Job.id.desc()).limit(limit).offset(offset)))
    return jobs, total


def request_cancel(session: Session, job_id: int, *, stale_after_s: float = STALE_AFTER_S) -> Job:
    """Ask a job to stop. A queued job, or a running one whose process is gone (an
    orphan), is cancelled at once; a live running one stops at its next check (the next
    batch); a finished job is returned unchanged."""
    job = get_job(session, job_id)
    if job.state in FINISHED_STATES:
        return job
    job.cancel_requested = True
    if job.state == JobState.QUEUED or is_orphan(job, stale_after_s=stale_after_s):
        job.state = JobState.CANCELLED
        job.finished_at = utcnow()
        follow_job(session, job, JobState.CANCELLED, None)
    session.flush()
    return job


def job_to_dict(job: Job, *, now: datetime | None = None) -> dict[str, Any]:
    """A JSON-ready view of a job, with progress (0..1) and an ETA when they are known."""
    total = job.total
    done = job.done or 0
    progress: float | None = None
    if total:
        progress = min(1.0, done / total)
    elif job.state == JobState.SUCCEEDED:
        progress = 1.0
    eta: float | None = None
    if job.state == JobState.RUNNING and job.started_at is not None and total and done > 0:
        started = job.started_at
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        elapsed = ((now or utcnow()) - started).total_seconds()
        # Rate since the start; it includes scanning and model loading, so it errs long.
        eta = round(max(0.0, elapsed / done * (total - done)), 1)
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "params": dict(job.params or {}),
        "total": total,
        "done": done,
        "progress": progress,
        "counts": dict(job.counts or {}),
        "error": job.error,
        "cancel_requested": bool(job.cancel_requested),
        "eta_seconds": eta,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


# --------------------------------------------------------------------------- running rows


def start_job(session: Session, job_id: int, *, stale_after_s: float = STALE_AFTER_S) -> Job | None:
    """Claim a job row for running; ``None`` when it must be skipped.

    Finished rows (cancelled while queued, or already run) are skipped, and so is a row
    another live process is running (a row submitted twice, say by a recovery sweep,
    runs once); a row whose cancel was requested before it started becomes cancelled.
    Commits.
    """
    job = session.get(Job, job_id, populate_existing=True, with_for_update=True)
    if job is None or job.state in FINISHED_STATES:
        return None
    if job.state == JobState.RUNNING and not is_orphan(job, stale_after_s=stale_after_s):
        session.rollback()
        return None
    if job.cancel_requested:
        job.state, job.finished_at = JobState.CANCELLED, utcnow()
        session.commit()
        return None
    job.state, job.started_at, job.error = JobState.RUNNING, utcnow(), None
    # Who runs it: a job left "running" by a process that died can then be told apart
    # from one still at work (see owner_gone).
    job.params = {**(job.params or {}), "owner": {"host": socket.gethostname(), "pid": os.getpid()}}
    job.heartbeat_at = job.started_at
    session.commit()
    return job


def set_progress(
    session: Session,
    job_id: int,
    *,
    done: int | None = None,
    total: int | None = None,
    counts: Mapping[str, Any] | None = None,
) -> None:
    """Record progress of a running job. Commits."""
    job = session.get_one(Job, job_id)
    if done is not None:
        job.done = done
    if total is not None:
        job.total = total
    if counts is not None:
        job.counts = dict(counts)
    session.commit()


def end_job(
    session: Session,
    job_id: int,
    state: JobState,
    *,
    error: str | None = None,
    counts: Mapping[str, Any] | None = None,
) -> None:
    """Close a job with its final state (and error, counts). Commits."""
    session.rollback()  # whatever the failed work left half-done must not commit here
    job = session.get_one(Job, job_id, populate_existing=True)
    job.state = state
    job.error = error[:ERROR_MAX] if error else None
    job.finished_at = utcnow()
    if counts is not None:
        job.counts = dict(counts)
    session.commit()


def requeue_for_retry(session: Session, job_id: int, error: str) -> None:
    """Put a job whose attempt failed back to queued, so the queue's retry runs it again."""
    session.rollback()
    job = session.get_one(Job, job_id, populate_existing=True)
    job.state = JobState.QUEUED
    job.error = f"attempt failed, retrying: {error}"[:ERROR_MAX]
    job.finished_at = None
    session.commit()


def cancel_requested(session: Session, job_id: int) -> bool:
    """Whether somebody asked job ``job_id`` to stop (one tiny query)."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


# --------------------------------------------------------------------------- catalog

_catalogs: dict[str, sessionmaker[Session]] = {}
_identities: dict[str, str] = {}
_catalogs_lock = threading.Lock()


def catalog_identity(database_url: str) -> str:
    """The id of the catalog at ``database_url`` (its one ``catalog`` row), read once
    per process and URL: it never changes."""
    with _catalogs_lock:
        known = _identities.get(database_url)
    if known is not None:
        return known
    with catalog_sessions(database_url)() as session:
        found = session.scalar(select(CatalogInfo.id).order_by(CatalogInfo.created_at).limit(1))
    if found is None:  # the migration writes it; only a hand-edited catalog lacks it
        raise ConfigError("the catalog has no identity row (table catalog): run vitdex db upgrade")
    with _catalogs_lock:
        _identities[database_url] = found
    return found


def catalog_sessions(database_url: str) -> sessionmaker[Session]:
    """Sessions on the catalog at ``database_url``, migrated; one engine per process and
    URL, so a worker running many jobs keeps one connection pool."""
    from vitdex.db.engine import ensure_schema, make_engine, session_factory

    with _catalogs_lock:
        sessions = _catalogs.get(database_url)
        if sessions is None:
            engine = make_engine(database_url)
            ensure_schema(engine)
            sessions = session_factory(engine)
            _catalogs[database_url] = sessions
        return sessions
