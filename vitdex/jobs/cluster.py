"""Cluster jobs: the function a queue runs for a job row of kind ``cluster``."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import jobs as job_sql
from vitdex.db.models import ClusterRun, JobState
from vitdex.errors import ConfigError
from vitdex.jobs.runner import CancelPoller, progress_writer, run_job_guarded
from vitdex.search.cluster import cluster_space, filter_from_params


def run_cluster_job(settings: Settings, job_id: int) -> None:
    """Run the cluster job ``job_id``: params ``{"space", "k", "filter", "method", "seed"}``.

    The run id and cluster count end up in the job's counts.
    """

    def work(sessions: sessionmaker[Session]) -> None:
        with sessions() as session:
            params = dict(job_sql.get_job(session, job_id).params or {})
        if not params.get("space"):
            raise ConfigError("cluster job has no space")
        run_id = cluster_space(
            settings,
            sessions,
            space=str(params["space"]),
            k=params.get("k", "auto"),
            filter=filter_from_params(params.get("filter")),
            method=str(params.get("method", "kmeans")),
            seed=int(params.get("seed", 0)),
            progress=progress_writer(sessions, job_id),
            should_stop=CancelPoller(sessions, job_id),
            job_id=job_id,
        )
        with sessions() as session:
            run = session.get_one(ClusterRun, run_id)
            counts = {"run_id": run_id, "clusters": run.k, "n_images": run.n_images}
            job_sql.end_job(session, job_id, JobState.SUCCEEDED, counts=counts)

    run_job_guarded(settings, job_id, work, what="cluster")
