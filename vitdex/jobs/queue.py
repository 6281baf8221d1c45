"""Job queues: rq on Redis when a Redis URL is configured, else one background thread.

The one place that branches on having Redis. Either way a job is a row in the ``jobs``
table (see :mod:`vitdex.db.jobs`) and a module-level function that takes the settings of
the process that runs it and the row's id, named by dotted path so this module, and the
API process that uses it, never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import queue as stdlib_queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from vitdex.config import Settings
from vitdex.errors import ConfigError, QueueUnavailableError

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

#: Job kind → the function that runs a job row of that kind, ``fn(settings, job_id)``.
JOB_FUNCTIONS: dict[str, str] = {
    "index": "vitdex.jobs.index.run_index_job",
    "cluster": "vitdex.jobs.cluster.run_cluster_job",
    "train": "vitdex.jobs.training.run_train_job",
    "export": "vitdex.jobs.training.run_export_job",
    "map": "vitdex.jobs.maps.run_map_job",
    "duplicates": "vitdex.jobs.duplicates.run_duplicates_job",
    "head-train": "vitdex.jobs.heads.run_head_train_job",
    "head-apply": "vitdex.jobs.heads.run_head_apply_job",
    "lora-extract": "vitdex.jobs.lora.run_lora_extract_job",
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


#: The settings :func:`run_queued_job` runs jobs with, bound by the worker (``vitdex
#: worker``) of this process before it takes jobs off the queue.
_worker_settings: Settings | None = None


def bind_worker_settings(settings: Settings | None) -> None:
    """Make ``settings`` the ones rq jobs of this process run with (``None`` unbinds).

    rq calls a job's function with the job's arguments only, and those were chosen by
    the process that enqueued it; the worker's own settings (its catalog, model and
    device, from its flags and environment) reach the job through this binding.
    """
    global _worker_settings
    _worker_settings = settings


def run_queued_job(job_id: int, kind: str, catalog: str) -> None:
    """What an rq worker runs: job row ``job_id`` of ``catalog``, by its ``kind``, with
    the settings its worker bound (:func:`bind_worker_settings`).

    Each catalog has a queue of its own (:func:`rq_queue_name`); should a job reach a
    worker whose catalog is another all the same, the worker refuses it, saying so,
    rather than run its own row with that id.
    """
    from vitdex.db import jobs as job_sql

    settings = _worker_settings
    if settings is None:
        raise ConfigError(
            f"job {job_id} needs the worker's settings: run it with `vitdex worker` "
            "(a bare `rq worker` knows no catalog)"
        )
    mine = job_sql.catalog_identity(settings.storage.resolved_database_url)
    if mine != catalog:
        raise ConfigError(
            f"job {job_id} belongs to catalog {catalog[:12]}, but this worker's catalog "
            f"is {mine[:12]}: start the worker with the catalog's --home/--database-url "
            "(or VITDEX_HOME/VITDEX_DATABASE_URL)"
        )
    started = time.monotonic()
    try:
        _resolve(job_function_path(kind))(settings, job_id)
    finally:
        # One line per job, whatever became of it, so a worker's log says what it did.
        log.info(
            "job %d (%s): %s in %.1f s",
            job_id,
            kind,
            _row_state(settings, job_id),
            time.monotonic() - started,
        )


def _row_state(settings: Settings, job_id: int) -> str:
    """The state job row ``job_id`` ended in, or why it could not be read."""
    from vitdex.db import jobs as job_sql

    try:
        with job_sql.catalog_sessions(settings.storage.resolved_database_url)() as session:
            return str(job_sql.get_job(session, job_id).state)
    except Exception as exc:  # the log line must not hide the job's own outcome
        return f"state unknown ({exc})"


def _resolve(path: str) -> Callable[[Settings, int], None]:
    module, _, name = path.rpartition(".")
    func: Callable[[Settings, int], None] = getattr(importlib.import_module(module), name)
    return func


@runtime_checkable
class JobQueue(Protocol):
    """Runs job rows somewhere: in this process or on rq workers."""

    def submit(self, job_id: int, *, kind: str | None = None, replace: bool = False) -> None:
        """Run the (committed, queued) job row ``job_id``; ``kind`` saves reading it from
        SQL. Submitting a row the queue already holds does nothing, unless ``replace``
        says the copy it holds is dead (the row was an orphan, recovered): then it is
        queued afresh. Raises :class:`QueueUnavailableError` when the queue cannot be
        reached (the row stays queued; a recovery sweep submits it later)."""
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
        # Jobs run with this process's settings, handed in once, never re-read.
        self._settings = settings
        self._kind_of = _KindLookup(settings)
        self._items: stdlib_queue.Queue[tuple[int, str] | None] = stdlib_queue.Queue()
        self._submitted: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="vitdex-jobs", daemon=True)
        self._thread.start()

    def submit(self, job_id: int, *, kind: str | None = None, replace: bool = False) -> None:
        """Queue the job row; a row already submitted to this queue is not queued again
        (unless ``replace``: it ran, or began to, and was recovered since)."""
        path = job_function_path(kind or self._kind_of(job_id))
        with self._lock:
            if self._closed:
                raise RuntimeError("the job queue is closed")
            if job_id in self._submitted and not replace:
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
                    _resolve(path)(self._settings, job_id)
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
                raise ConfigError("no Redis to queue jobs on: give --redis-url (VITDEX_REDIS_URL)")
            connection = Redis.from_url(url)
        self._redis = connection
        self._stale_after_s = settings.jobs.job_stale_after_s
        self._kind_of = _KindLookup(settings)
        self._database_url = settings.storage.resolved_database_url
        self.queue = Queue(rq_queue_name(settings), connection=connection)

    @property
    def catalog(self) -> str:
        """The id of the catalog whose job rows this queue carries."""
        from vitdex.db import jobs as job_sql

        return job_sql.catalog_identity(self._database_url)

    def submit(self, job_id: int, *, kind: str | None = None, replace: bool = False) -> None:
        """Enqueue the job row under its fixed id (see :func:`rq_job_id`).

        A copy rq still holds is kept while it may run, and replaced when rq no longer
        knows it, ended it, or holds it as started by a worker that is gone (``replace``,
        or started longer ago than the stale threshold while the row still waits).
        """
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            self._submit(job_id, kind=kind, replace=replace)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise QueueUnavailableError(
                f"the job queue (Redis) is unavailable ({exc}); job {job_id} stays queued "
                "and is submitted again once Redis is back"
            ) from None

    def _submit(self, job_id: int, *, kind: str | None, replace: bool) -> None:
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
            if not self._drop_if_dead(job_id, started_is_dead=replace):
                return
            enqueue()

    def _drop_if_dead(self, job_id: int, *, started_is_dead: bool) -> bool:
        """Delete rq's copy of the row's job when it will not run the row: ended (kept
        for its result TTL), or started by a worker that died (``started_is_dead``;
        started before the row went back to queued; or longer ago than the stale
        threshold, while a live worker claims the row within seconds of starting it).
        True if no copy is left."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job as RqJob
        from rq.job import JobStatus

        try:
            existing = RqJob.fetch(rq_job_id(self.catalog, job_id), connection=self._redis)
            status = existing.get_status(refresh=True)
        except NoSuchJobError:
            return True  # expired in between
        ended = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
        dead = status in ended
        if status == JobStatus.STARTED and not dead:
            started = existing.started_at
            if started is not None and started.tzinfo is None:
                started = started.replace(tzinfo=UTC)
            age = (datetime.now(UTC) - started).total_seconds() if started else float("inf")
            queued_since = self._queued_since(job_id)
            # Started before the row went back to queued: an earlier attempt's copy, whose
            # process was found dead (a live one would have kept the row running).
            earlier = started is None or (queued_since is not None and started < queued_since)
            dead = started_is_dead or age > self._stale_after_s or earlier
        if not dead:
            log.info("job %d is already in rq (%s); not enqueued again", job_id, status)
            return False
        log.info("job %d: rq's copy is %s and will not run it; enqueued afresh", job_id, status)
        existing.delete()
        return True

    def _queued_since(self, job_id: int) -> datetime | None:
        """When the row was last put in ``queued`` (nothing updates a queued row), or
        None when it is not queued."""
        from sqlalchemy import select

        from vitdex.db import jobs as job_sql
        from vitdex.db.models import Job, JobState

        with job_sql.catalog_sessions(self._database_url)() as session:
            found = session.execute(
                select(Job.state, Job.updated_at).where(Job.id == job_id)
            ).first()
        if found is None or found.state != JobState.QUEUED:
            return None
        since: datetime = found.updated_at
        return since if since.tzinfo is not None else since.replace(tzinfo=UTC)

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
    """rq when ``settings.api.redis_url`` is set, else a :class:`ThreadQueue` running
    jobs here with ``settings``."""
    if settings.api.redis_url:
        return RqQueue(settings, **kwargs)
    return ThreadQueue(settings)
