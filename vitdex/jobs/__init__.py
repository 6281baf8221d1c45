"""Running job rows: the guarded runner, the queues (rq or in-process), the recovery
sweep, the worker, and the one function per job kind.

Each job runs with the settings of the process that runs it, handed in. The job
functions (:mod:`vitdex.jobs.index`, :mod:`~vitdex.jobs.cluster`,
:mod:`~vitdex.jobs.training`) are not imported here: queues name them by dotted path, so
a process that only queues jobs (the API) never imports torch.
"""

from vitdex.jobs.queue import (
    JOB_FUNCTIONS,
    JobQueue,
    RqQueue,
    ThreadQueue,
    bind_worker_settings,
    job_function_path,
    make_queue,
    rq_job_id,
    rq_queue_name,
    run_queued_job,
)
from vitdex.jobs.recovery import RecoveryReport, recover_jobs, recover_orphans
from vitdex.jobs.runner import CancelPoller, progress_writer, run_job_guarded
from vitdex.jobs.worker import run_worker

__all__ = [
    "JOB_FUNCTIONS",
    "CancelPoller",
    "JobQueue",
    "RecoveryReport",
    "RqQueue",
    "ThreadQueue",
    "bind_worker_settings",
    "job_function_path",
    "make_queue",
    "progress_writer",
    "recover_jobs",
    "recover_orphans",
    "rq_job_id",
    "rq_queue_name",
    "run_job_guarded",
    "run_queued_job",
    "run_worker",
]
