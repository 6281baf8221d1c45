"""Running one job row: claim it, beat while the work runs, record how it ended.

Every job function hands its work to :func:`run_job_guarded` with the settings of the
process that runs it (a worker's, the API's, the CLI's): nothing here reads them from
the environment, so a job runs against the catalog its process was pointed at.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import jobs as job_sql
from vitdex.db.models import JobState
from vitdex.db.recovery import Heartbeat
from vitdex.errors import VitdexError

log = logging.getLogger(__name__)


class CancelPoller:
    """A ``should_stop`` callable that reads ``jobs.cancel_requested`` at most every
    ``interval`` seconds (one tiny query, in its own session so it never disturbs the
    caller's transaction)."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: int, *, interval: float = 0.5
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.interval = interval
        self._last = float("-inf")
        self._cancelled = False
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        """Whether somebody asked the job to stop."""
        with self._lock:
            if self._cancelled:
                return True
            now = time.monotonic()
            if now - self._last < self.interval:
                return False
            self._last = now
            with self.sessions() as session:
                self._cancelled = job_sql.cancel_requested(session, self.job_id)
            return self._cancelled


def progress_writer(
    sessions: sessionmaker[Session], job_id: int, *, every_s: float = 0.0
) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that writes to the job row, at most once
    every ``every_s`` seconds (the last call, ``done == total``, is always written)."""
    last = float("-inf")

    def write(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done != total and now - last < every_s:
            return
        last = now
        with sessions() as session:
            job_sql.set_progress(session, job_id, done=done, total=total)

    return write


def _rq_will_retry() -> bool:
    """Whether this runs inside an rq job that rq will retry after an exception."""
    try:
        from rq import get_current_job
    except ImportError:  # pragma: no cover - rq is a dependency
        return False
    current = get_current_job()
    return bool(current is not None and current.should_retry)


def run_job_guarded(
    settings: Settings,
    job_id: int,
    work: Callable[[sessionmaker[Session]], None],
    *,
    what: str,
    on_end: Callable[[Session, JobState, str | None], None] | None = None,
) -> None:
    """Claim the job row in ``settings``' catalog, run ``work`` and record how it ended.

    ``work`` closes the row itself on success or cancellation. A :class:`VitdexError`
    (bad params, a missing folder) fails the job for good; any other error fails it
    too, unless rq has retries left, in which case the row goes back to queued and the
    error is re-raised so rq retries it. ``on_end(session, state, error)`` lets a record
    that follows the job (a training run) take the state the row was given when ``work``
    did not finish: cancelled, failed, or queued again for a retry.
    """
    sessions = job_sql.catalog_sessions(settings.storage.resolved_database_url)
    with sessions() as session:
        claimed = job_sql.start_job(session, job_id, stale_after_s=settings.jobs.job_stale_after_s)
        if claimed is None:
            log.info("job %d: finished, cancelled or run elsewhere; skipped", job_id)
            return
    # Beats while the work runs, so a process that dies is told from one at work.
    heartbeat = Heartbeat(sessions, job_id, interval=settings.jobs.job_heartbeat_s).start()

    def end(state: JobState, error: str | None, *, retry: bool = False) -> None:
        with sessions() as session:
            if retry:
                job_sql.requeue_for_retry(session, job_id, error or "")
            else:
                job_sql.end_job(session, job_id, state, error=error)
            if on_end is not None:
                on_end(session, state, error)

    try:
        work(sessions)
    except job_sql.JobCancelled:
        end(JobState.CANCELLED, None)
    except VitdexError as exc:
        log.warning("%s job %d failed: %s", what, job_id, exc.message)
        end(JobState.FAILED, exc.message)
    except Exception as exc:
        retry = _rq_will_retry()
        end(
            JobState.QUEUED if retry else JobState.FAILED,
            f"{type(exc).__name__}: {exc}",
            retry=retry,
        )
        raise
    finally:
        heartbeat.stop()
