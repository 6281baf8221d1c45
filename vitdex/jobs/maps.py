"""Map jobs: the function a queue runs for a job row of kind ``map``."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import jobs as job_sql
from vitdex.db.models import JobState
from vitdex.errors import ConfigError
from vitdex.jobs.runner import CancelPoller, progress_writer, run_job_guarded
from vitdex.search.projection import compute_map


def run_map_job(settings: Settings, job_id: int) -> None:
    """Run the map job ``job_id``: params ``{"space", "method", "force", "seed"}``.

    The job's counts say the space, method, number of points and whether a fresh cached
    map was reused (``reused``) instead of computed.
    """

    def work(sessions: sessionmaker[Session]) -> None:
        with sessions() as session:
            params = dict(job_sql.get_job(session, job_id).params or {})
        if not params.get("space"):
            raise ConfigError("map job has no space")
        counts = compute_map(
            settings,
            sessions,
            space=str(params["space"]),
            method=str(params.get("method", "pca")),
            seed=int(params.get("seed", 0)),
            force=bool(params.get("force", False)),
            # Written at most twice a second: a chunk of PCA takes milliseconds.
            progress=progress_writer(sessions, job_id, every_s=0.5),
            should_stop=CancelPoller(sessions, job_id),
        )
        with sessions() as session:
            job_sql.end_job(session, job_id, JobState.SUCCEEDED, counts=counts)

    run_job_guarded(settings, job_id, work, what="map")
