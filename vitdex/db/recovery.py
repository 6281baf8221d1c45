"""Jobs whose process died: a heartbeat while a job runs, and what becomes of an orphan.

SQL is the record of truth for jobs. A process that runs a job (``run_job_guarded``)
writes ``jobs.heartbeat_at`` every few seconds; a ``running`` row whose heartbeat is
older than the stale threshold, or whose owner process on this host is gone, lost its
process (a SIGKILLed worker or ``vitdex train``) and is an *orphan*. An orphan goes back
to ``queued`` (the work it committed is kept: indexing skips what is indexed, training
resumes from its newest checkpoint), or to ``cancelled`` when its cancel was asked for.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import STALE_AFTER_S
from vitdex.db.jobs import is_orphan
from vitdex.db.models import Job, JobState, TrainingRun, iso, utcnow

log = logging.getLogger(__name__)

#: An orphan recovered this many times is failed instead: its work kills its process
#: (out of memory, say), and running it again would only do so again.
MAX_RECOVERIES = 3
_ERROR_MAX = 4000


class Heartbeat:
    """A daemon thread that writes ``jobs.heartbeat_at`` of one running job every
    ``interval`` seconds, in sessions of its own, until :meth:`stop`.

    A failed write (the database blinks) is logged and tried again at the next beat: a
    few missed beats are what the stale threshold allows for.
    """

    def __init__(self, sessions: sessionmaker[Session], job_id: int, *, interval: float) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"vitdex-heartbeat-{job_id}", daemon=True
        )

    def start(self) -> Heartbeat:
        """Start beating (the first beat comes after one interval; claiming the row
        wrote one already)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and wait for the thread (at most one write)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def beat(self) -> None:
        """Write one heartbeat, only while the row is still running."""
        with self.sessions() as session:
            session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.state == JobState.RUNNING)
                .values(heartbeat_at=utcnow())
            )
            session.commit()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # keep beating: the next write may well succeed
                log.warning("job %d: heartbeat not written: %s", self.job_id, exc)


def follow_runs(session: Session, job: Job, state: JobState, error: str | None) -> None:
    """Give the training runs that follow ``job`` its new state (they read like their job
    everywhere runs are listed)."""
    if job.kind != "train":
        return
    for run in session.scalars(select(TrainingRun).where(TrainingRun.job_id == job.id)):
        run.state = state
        run.error = error[:_ERROR_MAX] if error else None
        run.updated_at = utcnow()


@dataclass
class OrphanReport:
    """What :func:`recover_orphans` did: job ids queued again, cancelled, failed."""

    requeued: list[tuple[int, str]] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def _who(job: Job) -> str:
    owner = (job.params or {}).get("owner") or {}
    if owner.get("host") and owner.get("pid"):
        return f"{owner['host']} pid {owner['pid']}"
    return "unknown"


def _silence(job: Job, now: datetime) -> str:
    if job.heartbeat_at is None:
        return "its process is gone"
    return f"no heartbeat for {(now - job.heartbeat_at).total_seconds():.0f} s"


def recover_orphans(session: Session, *, stale_after_s: float = STALE_AFTER_S) -> OrphanReport:
    """Requeue every orphaned running job (or cancel it, when its cancel was asked for).

    Cheap: one query over the running rows, so the paths that list jobs can run it
    first. Flushes; the caller commits, then submits ``report.requeued`` to its queue.
    """
    report = OrphanReport()
    now = utcnow()
    running = session.scalars(select(Job).where(Job.state == JobState.RUNNING).order_by(Job.id))
    for job in list(running):
        if not is_orphan(job, stale_after_s=stale_after_s, now=now):
            continue
        why = f"its process ({_who(job)}) stopped without finishing: {_silence(job, now)}"
        params = dict(job.params or {})
        recoveries = int(params.get("recoveries") or 0) + 1
        params["recoveries"] = recoveries
        job.params = params
        job.heartbeat_at = None
        if job.cancel_requested:
            state, error = JobState.CANCELLED, f"cancelled: {why}"
            job.finished_at = now
            report.cancelled.append(job.id)
        elif (params.get("owner") or {}).get("foreground"):
            # A command run in a terminal (vitdex index) that died: no queue would run
            # it, and the next run of the command resumes the work.
            state = JobState.FAILED
            error = f"interrupted: {why}; running the command again resumes the work"
            job.finished_at = now
            report.failed.append(job.id)
        elif recoveries > MAX_RECOVERIES:
            state = JobState.FAILED
            error = f"{why}; failed after {MAX_RECOVERIES} recoveries (it kills its process?)"
            job.finished_at = now
            report.failed.append(job.id)
        else:
            state = JobState.QUEUED
            error = f"recovered at {iso(now)} (#{recoveries}): {why}; queued again"
            job.finished_at = None
            report.requeued.append((job.id, job.kind))
        job.state = state
        job.error = error[:_ERROR_MAX]
        # A run that follows the job reads queued, not failed: it resumes from its checkpoint.
        follow_runs(session, job, state, error if state != JobState.QUEUED else None)
        log.warning("job %d (%s): %s", job.id, job.kind, error)
    session.flush()
    return report
