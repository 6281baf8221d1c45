"""Job queues: rq on Redis when ``VITDEX_REDIS_URL`` is set, else one background thread.

The one place that branches on having Redis. Either way a job is a row in the ``jobs``
table (see :mod:`vitdex.db.jobs`) and a module-level function that takes its id, named by
dotted path so this module, and the API process that uses it, never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import queue as stdlib_queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from vitdex.config import Settings
from vitdex.errors import ConfigError

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

#: Job kind → the function that runs a job row of that kind.
JOB_FUNCTIONS: dict[str, str] = {
    "index": "vitdex.indexer.jobs.run_index_job",
    "cluster": "vitdex.search.cluster.run_cluster_job",
    "train": "vitdex.training.jobs.run_train_job",
    "export": "vitdex.training.jobs.run_export_job",
}

#: rq retries for transient failures (a database or Redis blip), spaced out.
RETRY_MAX = 3
RETRY_INTERVALS = (10, 60, 300)
#: Indexing a large library takes hours; rq kills a job past this many seconds.
JOB_TIMEOUT_S = 24 * 3600
#: How long rq keeps a finished job's key; the state lives in SQL anyway.
RESULT_TTL_S = 3600
FAILURE_TTL_S = 7 * 24 * 3600


def job_function_path(kind: str) -> str:
    """The dotted path of the function that runs jobs of ``kind``."""
    try:
        return JOB_FUNCTIONS[kind]
    except KeyError:
        known = ", ".join(sorted(JOB_FUNCTIONS))
        raise ConfigError(f"unknown job kind {kind!r} (known: {known})") from None


def rq_queue_name(settings: Settings) -> str:
    """The rq queue of this catalog: ``VITDEX_QUEUE_NAME`` and the catalog's id, so that
    catalogs sharing one Redis never take each other's jobs off the queue."""
    from vitdex.db import jobs as job_sql

    catalog = job_sql.catalog_identity(settings.storage.resolved_database_url)
    return f"{settings.api.queue_name}-{catalog[:12]}"


def rq_job_id(catalog: str, job_id: int) -> str:
    """The rq id of a job row: fixed, so one row is never enqueued twice, and named by
    its catalog, so job 7 of one catalog is not job 7 of another sharing the Redis."""
    return f"vitdex-{catalog[:12]}-job-{job_id}"


def run_queued_job(job_id: int, kind: str, catalog: str) -> None:
    """What an rq worker runs: job row ``job_id`` of ``catalog``, by its ``kind``.

    Each catalog has a queue of its own (:func:`rq_queue_name`); should a job reach a
    worker whose ``VITDEX_DATABASE_URL`` is another catalog all the same, the worker
    refuses it, saying so, rather than run its own row with that id.
    """
    from vitdex.config import load_settings
    from vitdex.db import jobs as job_sql

    url = load_settings().storage.resolved_database_url
    mine = job_sql.catalog_identity(url)
    if mine != catalog:
        raise ConfigError(
            f"job {job_id} belongs to catalog {catalog[:12]}, but this worker's "
            f"VITDEX_DATABASE_URL is catalog {mine[:12]}: point the worker at the "
            "catalog's database"
        )
    _resolve(job_function_path(kind))(job_id)


def _resolve(path: str) -> Callable[[int], None]:
    module, _, name = path.rpartition(".")
    func: Callable[[int], None] = getattr(importlib.import_module(module), name)
    return func


@runtime_checkable
class JobQueue(Protocol):
    """Runs job rows somewhere: in this process or on rq workers."""

    def submit(self, job_id: int, *, kind: str | None = None) -> None:
        """Run the (committed) job row ``job_id``; ``kind`` saves reading it from SQL."""
        ...

    def depth(self) -> int:
        """How many jobs wait to start."""
        ...

    def ping(self) -> bool:
        """Whether the backend is reachable."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


class _KindLookup:
    """Reads a job row's kind from the catalog (for ``submit`` without ``kind``)."""

    def __init__(self, settings: Settings) -> None:
        self._url = settings.storage.resolved_database_url

    def __call__(self, job_id: int) -> str:
        from vitdex.db import jobs as job_sql

        with job_sql.catalog_sessions(self._url)() as session:
            return job_sql.get_job(session, job_id).kind


class ThreadQueue:
    """One background thread in this process; jobs run one at a time, in order.

    For a laptop or a test: no Redis needed. Jobs still report through SQL, so the API
    reads them exactly as it reads rq-run jobs. Jobs waiting here are lost if the
    process ends (their rows stay ``queued``).
    """

    def __init__(self, settings: Settings) -> None:
        self._kind_of = _KindLookup(settings)
        self._items: stdlib_queue.Queue[tuple[int, str] | None] = stdlib_queue.Queue()
        self._submitted: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="vitdex-jobs", daemon=True)
        self._thread.start()

    def submit(self, job_id: int, *, kind: str | None = None) -> None:
        """Queue the job row; a row already submitted to this queue is not queued again."""
        path = job_function_path(kind or self._kind_of(job_id))
        with self._lock:
            if self._closed:
                raise RuntimeError("the job queue is closed")
            if job_id in self._submitted:
                return
            self._submitted.add(job_id)
        self._items.put((job_id, path))

    def depth(self) -> int:
        """Jobs submitted and not yet started."""
        return self._items.qsize()

    def ping(self) -> bool:
        """Always reachable: the worker is a thread of this process."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has run; False on timeout."""
        done = threading.Event()

        def waiter() -> None:
            self._items.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop after the running job; jobs not started yet stay ``queued`` in SQL."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:  # drop what has not started
            try:
                self._items.get_nowait()
                self._items.task_done()
            except stdlib_queue.Empty:
                break
        self._items.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._items.get()
            try:
                if item is None:
                    return
                job_id, path = item
                try:
                    _resolve(path)(job_id)
                except Exception:
                    # The job function already recorded the failure in its row.
                    log.exception("job %d (%s) failed", job_id, path)
            finally:
                self._items.task_done()


class RqQueue:
    """rq on Redis: workers (``vitdex worker``) run the jobs, with retries."""

    def __init__(self, settings: Settings, *, connection: Redis | None = None) -> None:
        from redis import Redis
        from rq import Queue

        url = settings.api.redis_url
        if connection is None:
            if not url:
                raise ConfigError("VITDEX_REDIS_URL is not set")
            connection = Redis.from_url(url)
        self._redis = connection
        self._kind_of = _KindLookup(settings)
        self._database_url = settings.storage.resolved_database_url
        self.queue = Queue(rq_queue_name(settings), connection=connection)

    @property
    def catalog(self) -> str:
        """The id of the catalog whose job rows this queue carries."""
        from vitdex.db import jobs as job_sql

        return job_sql.catalog_identity(self._database_url)

    def submit(self, job_id: int, *, kind: str | None = None) -> None:
        """Enqueue the job row under its fixed id (see :func:`rq_job_id`)."""
        from rq import Retry
        from rq.exceptions import DuplicateJobError

        kind = kind or self._kind_of(job_id)
        job_function_path(kind)  # an unknown kind fails here, not on the worker
        catalog = self.catalog

        def enqueue() -> None:
            self.queue.enqueue_call(
                f"{__name__}.run_queued_job",
                args=(job_id, kind, catalog),
                job_id=rq_job_id(catalog, job_id),
                # unique: rq refuses a second job under the same id instead of
                # overwriting it, so a retried HTTP request cannot run a job twice.
                unique=True,
                timeout=JOB_TIMEOUT_S,
                result_ttl=RESULT_TTL_S,
                failure_ttl=FAILURE_TTL_S,
                retry=Retry(max=RETRY_MAX, interval=list(RETRY_INTERVALS)),
                description=f"vitdex {kind} job {job_id} of catalog {catalog[:12]}",
            )

        try:
            enqueue()
        except DuplicateJobError:
            if not self._drop_if_done(job_id):
                log.info("job %d is already in rq; not enqueued again", job_id)
                return
            enqueue()

    def _drop_if_done(self, job_id: int) -> bool:
        """Delete a *finished* rq job under the row's id (kept for its result TTL, and
        the row was resubmitted, say to resume it); True if it is gone now."""
        from rq.job import Job as RqJob
        from rq.job import JobStatus

        try:
            existing = RqJob.fetch(rq_job_id(self.catalog, job_id), connection=self._redis)
        except Exception:
            return True  # expired in between
        ended = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
        if existing.get_status(refresh=True) not in ended:
            return False
        existing.delete()
        return True

    def depth(self) -> int:
        """Jobs waiting in the rq queue."""
        return int(self.queue.count)

    def ping(self) -> bool:
        """Whether Redis answers PING."""
        try:
            return bool(self._redis.ping())
        except Exception:
            return False

    def close(self) -> None:
        """Close the Redis connection pool."""
        self._redis.close()


def make_queue(settings: Settings, **kwargs: Any) -> JobQueue:
    """rq when ``settings.api.redis_url`` is set, else a :class:`ThreadQueue`."""
    if settings.api.redis_url:
        return RqQueue(settings, **kwargs)
    return ThreadQueue(settings)
