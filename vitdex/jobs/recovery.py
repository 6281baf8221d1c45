"""The recovery sweep: SQL is the record of truth for jobs, the queue only carries them.

Jobs whose process died (orphans) go back to queued, or to cancelled when their cancel
was asked for; queued rows the queue lost (Redis restarted empty, or was down when the
row was made) are handed to it again. Run at API start-up, by ``vitdex worker`` at
start-up and periodically, and before jobs are listed or cancelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vitdex.config import STALE_AFTER_S
from vitdex.errors import ConfigError, QueueUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from vitdex.jobs.queue import JobQueue

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What :func:`recover_jobs` did, by job id."""

    #: Orphans (running, their process gone) put back to queued.
    requeued: list[int] = field(default_factory=list)
    #: Orphans whose cancel was asked for: cancelled.
    cancelled: list[int] = field(default_factory=list)
    #: Orphans recovered too often: failed.
    failed: list[int] = field(default_factory=list)
    #: Queued rows handed to the queue (those it already held are left as they are).
    submitted: list[int] = field(default_factory=list)
    #: Why submitting stopped (the queue is unreachable), or None.
    unavailable: str | None = None


def recover_orphans(
    sessions: sessionmaker[Session],
    queue: JobQueue | None,
    *,
    stale_after_s: float = STALE_AFTER_S,
) -> RecoveryReport:
    """Requeue (or cancel) orphaned running jobs and submit those requeued to ``queue``.

    The cheap part of :func:`recover_jobs` (one query over the running rows), run first
    by every path that lists or cancels jobs, so a dead job never reads running for much
    longer than ``stale_after_s``. With ``queue`` None (a CLI without Redis) requeued
    rows wait for ``vitdex serve`` or ``vitdex train resume``. Never raises for an
    unreachable queue: that is reported, and the rows stay queued.
    """
    from vitdex.db import recovery

    with sessions() as session:
        found = recovery.recover_orphans(session, stale_after_s=stale_after_s)
        session.commit()
    report = RecoveryReport(
        requeued=[job_id for job_id, _ in found.requeued],
        cancelled=found.cancelled,
        failed=found.failed,
    )
    if queue is not None:
        _submit_all(queue, found.requeued, report, replace=True)
    return report


def recover_jobs(
    sessions: sessionmaker[Session],
    queue: JobQueue,
    *,
    stale_after_s: float = STALE_AFTER_S,
    limit: int = 10_000,
) -> RecoveryReport:
    """The recovery sweep: SQL is the record of truth for jobs.

    Requeues orphaned running jobs (:func:`recover_orphans`), then submits every queued
    row, oldest first (at most ``limit``), to ``queue``: a row the queue already holds
    (waiting, scheduled for a retry, or just started) is left alone, one it lost (Redis
    restarted empty, or down when the row was made) or ended is enqueued again. Run at
    API start-up and by ``vitdex worker`` at start-up and periodically. Never raises
    for an unreachable queue: ``report.unavailable`` says so.
    """
    from sqlalchemy import select

    from vitdex.db.models import Job, JobState

    report = recover_orphans(sessions, queue, stale_after_s=stale_after_s)
    if report.unavailable is not None:
        return report
    with sessions() as session:
        rows = session.execute(
            select(Job.id, Job.kind)
            .where(Job.state == JobState.QUEUED)
            .order_by(Job.id)
            .limit(limit)
        ).all()
    recovered = set(report.requeued)
    waiting = [(job_id, kind) for job_id, kind in rows if job_id not in recovered]
    _submit_all(queue, waiting, report, replace=False)
    if report.requeued or report.cancelled or report.failed or report.unavailable:
        log.warning(
            "job recovery: %d orphans requeued, %d cancelled, %d failed; %d rows submitted%s",
            len(report.requeued),
            len(report.cancelled),
            len(report.failed),
            len(report.submitted),
            f"; stopped: {report.unavailable}" if report.unavailable else "",
        )
    return report


def _submit_all(
    queue: JobQueue, rows: list[tuple[int, str]], report: RecoveryReport, *, replace: bool
) -> None:
    for job_id, kind in rows:
        try:
            queue.submit(job_id, kind=kind, replace=replace)
        except QueueUnavailableError as exc:
            report.unavailable = exc.message
            log.warning("job recovery stopped: %s", exc.message)
            return
        except ConfigError as exc:  # a row of a kind this version does not know
            log.warning("job %d not submitted: %s", job_id, exc.message)
            continue
        report.submitted.append(job_id)
