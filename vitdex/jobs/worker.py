"""The rq worker (``vitdex worker``): runs index, cluster, export and training jobs from Redis.

It runs every job with the settings it was started with (:func:`run_worker`'s), whatever
the process that queued the job was configured with: its catalog, model and device.

It does not fork per job (rq's :class:`~rq.SimpleWorker`): the ViT is loaded once, before
the first job, and a GPU context stays usable, neither of which survives rq's default
fork-per-job worker.

It does not fork a scheduler either. rq's ``with_scheduler`` forks a child that a
SIGKILLed worker leaves behind (re-parented to init, still holding the queue's
scheduler lock), and forking a process that has loaded torch with its thread pools is
unsafe besides. The scheduler runs as a thread of the worker instead, so it dies with
it; its lock then expires and the next worker takes it.

And it outlives Redis: when Redis goes away rq's work loop ends (and its tear-down
fails), so the loop here waits for Redis to answer again, backing off, and starts a new
rq worker on the same queue; only a stop request (SIGINT, SIGTERM) ends it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from vitdex.config import Settings
from vitdex.errors import ConfigError

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

#: Seconds between reconnection attempts while Redis is away: doubling up to the last.
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
#: How often the scheduler thread moves due retries back onto the queue (rq's default);
#: whole seconds, since rq sets its lock's TTL (in seconds) from it.
SCHEDULER_INTERVAL_S = 1


def backoff(delays: tuple[float, ...] = RECONNECT_DELAYS) -> Iterator[float]:
    """The waits between reconnection attempts: ``delays``, then the last one for ever."""
    yield from delays
    while True:
        yield delays[-1]


class SchedulerThread(threading.Thread):
    """rq's scheduler for one queue, run as a daemon thread of the worker.

    It takes the queue's scheduler lock when free (one scheduler per queue across all
    workers), keeps it alive, and enqueues jobs whose retry time has come. A Redis
    error skips a round; the lock, if lost meanwhile, is taken again when free.
    """

    def __init__(
        self,
        queue_name: str,
        connection: Redis,
        *,
        interval: int = SCHEDULER_INTERVAL_S,
        periodic: Callable[[], object] | None = None,
        periodic_every_s: float = 60.0,
    ) -> None:
        super().__init__(name="vitdex-scheduler", daemon=True)
        from rq.scheduler import RQScheduler

        # RQScheduler makes its own connection from this one's pool settings. (Any: rq
        # leaves most of its methods unannotated.)
        self.scheduler: Any = RQScheduler([queue_name], connection=connection, interval=interval)
        self.interval = interval
        self._periodic = periodic
        self._periodic_every_s = periodic_every_s
        self._halt = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current round and release the lock (when Redis answers)."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        """Schedule until stopped; every ``periodic_every_s`` also run ``periodic``."""
        import time

        scheduler = self.scheduler
        next_periodic = time.monotonic() + self._periodic_every_s
        try:
            while not self._halt.is_set():
                try:
                    # A lock held by another worker's scheduler is tried again each
                    # round (one SET NX): it is free a minute after that worker died.
                    wanted = not scheduler.acquired_locks or scheduler.should_reacquire_locks
                    if wanted and scheduler.acquire_locks():
                        scheduler.register_birth()
                    if scheduler.acquired_locks:
                        scheduler.heartbeat()
                        scheduler.enqueue_scheduled_jobs()
                except Exception as exc:  # Redis away: the work loop reconnects
                    log.debug("scheduler round skipped: %s", exc)
                if self._periodic is not None and time.monotonic() >= next_periodic:
                    next_periodic = time.monotonic() + self._periodic_every_s
                    try:
                        self._periodic()
                    except Exception:
                        log.exception("periodic worker task failed; it runs again later")
                self._halt.wait(self.interval)
        finally:
            try:
                if scheduler.acquired_locks:
                    scheduler.release_locks()
                    scheduler.register_death()
            except Exception as exc:
                log.debug("scheduler lock left to expire: %s", exc)


def _worker_class() -> type[Any]:
    """rq's SimpleWorker that also tells the loop here when a stop was asked for."""
    from rq import SimpleWorker

    class Worker(SimpleWorker):
        stop_event: threading.Event

        def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
            self.stop_event.set()
            super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    return Worker


def _reachable(connection: Redis) -> bool:
    try:
        return bool(connection.ping())
    except Exception:
        return False


def _wait_for_redis(connection: Redis, url: str, stop: threading.Event) -> bool:
    """Wait, backing off, until Redis answers; False when a stop was asked for first."""
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    waited = False
    try:
        for delay in backoff():
            if stop.is_set():
                return False
            if _reachable(connection):
                if waited:
                    log.info("Redis at %s answers again; resuming work", url)
                return True
            waited = True
            log.warning("Redis at %s does not answer; retrying in %.1f s", url, delay)
            stop.wait(delay)
        return False  # pragma: no cover - backoff() never ends
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def redacted_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def run_worker(settings: Settings, *, burst: bool = False, preload: bool = True) -> bool:
    """Work on this catalog's queue until stopped (or, with ``burst``, until empty),
    running each job with ``settings``.

    Returns whether any job was run. ``preload`` loads the embedder first, so the first
    job does not pay for it and a broken model setting fails here, loudly. The recovery
    sweep (:func:`vitdex.jobs.recovery.recover_jobs`: jobs whose process died are queued again,
    queued rows that Redis lost are submitted again) runs each time the work loop starts
    and every half ``VITDEX_JOB_STALE_AFTER_S`` while it runs, from the scheduler thread,
    since the main thread is busy with the job.
    """
    from redis import Redis
    from rq import Queue

    from vitdex.db.jobs import catalog_sessions
    from vitdex.jobs.queue import RqQueue, bind_worker_settings, rq_queue_name
    from vitdex.jobs.recovery import recover_jobs

    url = settings.api.redis_url
    if not url:
        raise ConfigError(
            "the worker needs a Redis: give --redis-url redis://host:6379/0 (VITDEX_REDIS_URL)"
        )
    device = f"{settings.model.device} (resolved by the first job)"
    if preload:
        from vitdex.jobs.index import cached_embedder

        embedder = cached_embedder(settings.model)
        embedder.load()
        device = str(embedder.device)
    name = rq_queue_name(settings)
    # The one line that says which catalog, model and device this worker serves; the
    # URL's password is hidden, since worker logs are read and kept by others.
    log.info(
        "worker started: queue %s, catalog %s, model %s, device %s",
        name,
        redacted_url(settings.storage.resolved_database_url),
        settings.model.model,
        device,
    )
    stop = threading.Event()
    worker_class = _worker_class()
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    worked = False
    connection = Redis.from_url(url)
    sessions = catalog_sessions(settings.storage.resolved_database_url)
    stale_after_s = settings.jobs.job_stale_after_s
    # Not closed on its own: it shares (and would close) the worker's connection.
    jobs_queue = RqQueue(settings, connection=connection)

    def sweep() -> None:  # it logs what it recovered
        recover_jobs(sessions, jobs_queue, stale_after_s=stale_after_s)

    bind_worker_settings(settings)
    try:
        while not stop.is_set():
            if not _wait_for_redis(connection, url, stop):
                break
            try:
                sweep()
            except Exception:
                log.exception("job recovery sweep failed; it runs again later")
            worker = worker_class([Queue(name, connection=connection)], connection=connection)
            worker.stop_event = stop
            scheduler = SchedulerThread(
                name,
                connection,
                periodic=sweep,
                periodic_every_s=stale_after_s / 2,
            )
            scheduler.start()
            try:
                worked = bool(worker.work(burst=burst, logging_level=level)) or worked
            except Exception as exc:
                # rq's tear-down registers the worker's death in Redis: gone, it raises.
                log.debug("rq worker tear-down failed: %s", exc)
            finally:
                scheduler.stop()
            if stop.is_set():
                break
            if _reachable(connection):
                if burst:
                    break
                # A non-burst work loop that ended without a stop request hit an
                # unexpected error (rq logged it); start a fresh one after a pause.
                log.warning("rq's work loop ended unexpectedly; starting it again")
                stop.wait(RECONNECT_DELAYS[2])
            else:
                log.warning("lost Redis at %s; waiting for it to come back", url)
    finally:
        bind_worker_settings(None)
        connection.close()
    return worked
