"""Duplicate scans: the function a queue runs for a job row of kind ``duplicates``."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import jobs as job_sql
from vitdex.db.models import JobState
from vitdex.jobs.runner import CancelPoller, progress_writer, run_job_guarded
from vitdex.search.cluster import filter_from_params
from vitdex.search.duplicate_scan import scan_duplicates
from vitdex.search.duplicates import DEFAULT_K


def run_duplicates_job(settings: Settings, job_id: int) -> None:
    """Run the duplicates scan ``job_id``: params ``{"space", "threshold", "exact",
    "near", "k", "filter"}`` (each optional).

    The job's counts end up as the scan's report: groups found (new and kept unchanged),
    exact and near counts, images scanned, seconds.
    """

    def work(sessions: sessionmaker[Session]) -> None:
        with sessions() as session:
            params = dict(job_sql.get_job(session, job_id).params or {})
        threshold = params.get("threshold")
        report = scan_duplicates(
            settings,
            sessions,
            space=None if params.get("space") is None else str(params["space"]),
            threshold=None if threshold is None else float(threshold),
            exact=bool(params.get("exact", True)),
            near=bool(params.get("near", True)),
            k=int(params.get("k") or DEFAULT_K),
            filter=filter_from_params(params.get("filter")),
            # Written at most twice a second: a million-photo scan reports thousands of chunks.
            progress=progress_writer(sessions, job_id, every_s=0.5),
            should_stop=CancelPoller(sessions, job_id),
        )
        with sessions() as session:
            job_sql.end_job(session, job_id, JobState.SUCCEEDED, counts=report.counts())

    run_job_guarded(settings, job_id, work, what="duplicates")
