"""Head jobs: the functions a queue runs for job rows of kind ``head-train`` and
``head-apply``."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import jobs as job_sql
from vitdex.db.models import JobState
from vitdex.jobs.runner import CancelPoller, progress_writer, run_job_guarded
from vitdex.search.heads import apply_head, train_head


def run_head_train_job(settings: Settings, job_id: int) -> None:
    """Train the head the job names: params ``{"name", "space", "from_tags",
    "from_folder", "test_fraction", "seed", "replace"}``. The job's counts are the head's
    accuracy, example counts and notes; the full report is the head's."""

    def work(sessions: sessionmaker[Session]) -> None:
        with sessions() as session:
            params = dict(job_sql.get_job(session, job_id).params or {})
        folder = params.get("from_folder")
        head = train_head(
            settings,
            sessions,
            str(params["name"]),
            space=None if params.get("space") is None else str(params["space"]),
            from_tags=[str(t) for t in params.get("from_tags") or ()],
            from_folder=None if folder is None else str(folder),
            test_fraction=float(params.get("test_fraction", 0.2)),
            seed=int(params.get("seed", 0)),
            replace=bool(params.get("replace", False)),
            progress=progress_writer(sessions, job_id),
        )
        report = head["report"]
        counts = {
            "head": head["name"],
            "space": head["space"],
            "classes": head["classes"],
            "accuracy": report["accuracy"],
            "train_count": report["train_count"],
            "test_count": report["test_count"],
            "notes": report.get("notes", []),
        }
        with sessions() as session:
            job_sql.end_job(session, job_id, JobState.SUCCEEDED, counts=counts)

    run_job_guarded(settings, job_id, work, what="head training")


def run_head_apply_job(settings: Settings, job_id: int) -> None:
    """Label the library with the head the job names (params ``{"name"}``); cancellable
    between chunks. The job's counts are :func:`~vitdex.search.heads.apply_head`'s result."""

    def work(sessions: sessionmaker[Session]) -> None:
        with sessions() as session:
            params = dict(job_sql.get_job(session, job_id).params or {})
        result = apply_head(
            settings,
            sessions,
            str(params["name"]),
            # Written at most twice a second: a million photos are many chunks.
            progress=progress_writer(sessions, job_id, every_s=0.5),
            should_stop=CancelPoller(sessions, job_id),
        )
        with sessions() as session:
            job_sql.end_job(session, job_id, JobState.SUCCEEDED, counts=result)

    run_job_guarded(settings, job_id, work, what="head apply")
