"""Jobs whose process died: a heartbeat while a job runs, and what becomes of an orphan.

SQL is the record of truth for jobs. A process that runs a job records itself as the
row's owner (host, pid) and writes ``jobs.heartbeat_at`` every few seconds. A
``running`` row whose owner on this host is gone, or, owned on another host, whose
heartbeat is older than the stale threshold, lost its process (a SIGKILLed worker or
``vitdex train``) and is an *orphan*. An orphan goes back to ``queued`` (the work it
committed is kept: indexing skips what is indexed, training resumes from its newest
checkpoint), to ``cancelled`` when its cancel was asked for, or to ``failed`` when it
was run in a terminal (no queue would run it again) or has been recovered too often.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import STALE_AFTER_S
from vitdex.db.models import ERROR_MAX, Job, JobState, iso, utcnow
from vitdex.db.training import follow_job

log = logging.getLogger(__name__)

#: An orphan recovered this many times is failed instead: its work kills its process
#: (out of memory, say), and running it again would only do so again.
MAX_RECOVERIES = 3


def owner_gone(job: Job) -> bool:
    """Whether ``job`` was claimed by a process on this host that no longer exists.

    False when its owner is alive, unknown, or on another host (nothing here can tell).
    """
    owner = (job.params or {}).get("owner") or {}
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def is_orphan(
    job: Job, *, stale_after_s: float = STALE_AFTER_S, now: datetime | None = None
) -> bool:
    """Whether ``job`` reads running but lost its process: its owner on this host is
    gone, or, owned on another host, its heartbeat is older than ``stale_after_s``.

    A running row that names no owner and has no heartbeat (written by an older
    version) is never taken for an orphan: nothing can tell.
    """
    if job.state != JobState.RUNNING:
        return False
    owner = (job.params or {}).get("owner") or {}
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        # On this host the process itself says it: a live owner whose beats are late (a
        # SQLite write lock held long, a machine swapping) is still at work.
        return owner_gone(job)
    beat = job.heartbeat_at
    if beat is None:
        return False
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)
    return ((now or utcnow()) - beat).total_seconds() > stale_after_s


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
        job.error = error[:ERROR_MAX]
        # A run that follows the job reads queued, not failed: it resumes from its checkpoint.
        follow_job(session, job, state, error if state != JobState.QUEUED else None)
        log.warning("job %d (%s): %s", job.id, job.kind, error)
    session.flush()
    return report
