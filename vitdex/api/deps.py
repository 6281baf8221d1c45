"""Services shared by every request of one app, handed to handlers as dependencies.

They are made once per app: the catalog when the app starts, the search service (and with
it the model code) on the first request that needs it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import ServiceUnavailableException
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import jobs
from vitdex.db.models import JobState
from vitdex.errors import ConflictError, VitdexError

if TYPE_CHECKING:
    from vitdex.jobs.queue import JobQueue
    from vitdex.search.service import SearchService


log = logging.getLogger("vitdex.api")


class Services:
    """The settings, the catalog's sessions and the (lazily made) search service."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._search: SearchService | None = None
        self._queue: JobQueue | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open the catalog and bring its schema to head."""
        from vitdex.db.engine import ensure_schema, make_engine, session_factory

        with self._lock:
            if self._engine is None:
                engine = make_engine(self.settings.storage.resolved_database_url)
                ensure_schema(engine)
                self._engine = engine
                self._sessions = session_factory(engine)

    def close(self) -> None:
        """Dispose of the catalog's connections."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
                self._sessions = None
            self._search = None
            if self._queue is not None:
                self._queue.close()
                self._queue = None

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Session factory of the catalog (opened on first use if the app did not)."""
        if self._sessions is None:
            try:
                self.open()
            except VitdexError:
                raise
            except Exception as exc:
                log.warning("the catalog cannot be opened: %s", exc)
                raise ServiceUnavailableException("the catalog database is unavailable") from exc
        assert self._sessions is not None
        return self._sessions

    @property
    def search(self) -> SearchService:
        """The search service, made on first use (this imports the model code)."""
        if self._search is None:
            sessions = self.sessions
            with self._lock:
                if self._search is None:
                    from vitdex.search.service import SearchService

                    self._search = SearchService(self.settings, sessions)
        return self._search

    def resume_embedded_jobs(self) -> int:
        """Without Redis, jobs run in this process only: whatever was queued or running
        when the last process stopped is queued again here. Returns how many."""
        with self.sessions() as session:
            stale = [
                job
                for state in (JobState.RUNNING, JobState.QUEUED)
                for job in jobs.list_jobs(session, state=state.value, limit=1000)[0]
            ]
            for job in stale:
                job.state = JobState.QUEUED
            session.commit()
            kinds = [(job.id, job.kind) for job in sorted(stale, key=lambda j: j.id)]
        for job_id, kind in kinds:
            self.queue.submit(job_id, kind=kind)
        if kinds:
            log.info("resumed %d jobs left over by the previous process", len(kinds))
        return len(kinds)

    def recover_jobs(self) -> None:
        """With Redis: the recovery sweep (orphans requeued, queued rows rq lost
        submitted again); the worker runs it too, this covers a start with none."""
        from vitdex.jobs.recovery import recover_jobs

        recover_jobs(self.sessions, self.queue, stale_after_s=self.settings.jobs.job_stale_after_s)

    def recover_orphans(self) -> None:
        """Requeue (or cancel) jobs whose process died, before jobs are listed or
        cancelled: a dead job never reads running for long. One query; an unreachable
        queue only leaves the recovered rows queued for the next sweep."""
        from vitdex.jobs.recovery import recover_orphans

        recover_orphans(
            self.sessions, self.queue, stale_after_s=self.settings.jobs.job_stale_after_s
        )

    def check_database(self) -> str:
        """``ok`` when the catalog answers a trivial query; its error otherwise."""
        from sqlalchemy import text

        with self.sessions() as session:
            session.execute(text("SELECT 1"))
        return "ok"

    def list_jobs(
        self, *, state: str | None, kind: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of jobs newest first, and the total that match; jobs whose process died
        are recovered first, so none reads running for long."""
        self.recover_orphans()
        with self.sessions() as session:
            rows, total = jobs.list_jobs(
                session, state=state, kind=kind, limit=limit, offset=offset
            )
            return [jobs.job_to_dict(job) for job in rows], total

    def get_job(self, job_id: int) -> dict[str, Any]:
        """One job (recovered first if its process died)."""
        self.recover_orphans()
        with self.sessions() as session:
            return jobs.job_to_dict(jobs.get_job(session, job_id))

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        """Ask a job to stop (a queued one, or one whose process died, stops at once).

        A finished job cannot be cancelled: a 409 naming its state, rather than a 202
        that promises a cancel which never happens."""
        with self.sessions() as session:
            found = jobs.get_job(session, job_id)
            if found.state in jobs.FINISHED_STATES:
                raise ConflictError(
                    f"job {job_id} is already {JobState(found.state).value}: "
                    "only a queued or running job can be cancelled"
                )
            stale = self.settings.jobs.job_stale_after_s
            job = jobs.request_cancel(session, job_id, stale_after_s=stale)
            session.commit()
            return jobs.job_to_dict(job)

    @property
    def queue(self) -> JobQueue:
        """The job queue: rq on Redis when VITDEX_REDIS_URL is set, else a thread here."""
        with self._lock:
            if self._queue is None:
                from vitdex.jobs.queue import make_queue

                self._queue = make_queue(self.settings)
            return self._queue


def services_of(state: State) -> Services:
    """The :class:`Services` stored on an app's state."""
    found: Services = state["services"]
    return found


def provide_settings(state: State) -> Settings:
    """Dependency: the app's settings."""
    return services_of(state).settings


def provide_sessions(state: State) -> sessionmaker[Session]:
    """Dependency: the catalog's session factory."""
    return services_of(state).sessions


def provide_services(state: State) -> Services:
    """Dependency: all services; handlers reach the search service through it, inside a
    worker thread, so its first use (importing the model code) stays off the event loop."""
    return services_of(state)


def install(app: Litestar, settings: Settings) -> None:
    """Store the services on the app's state (called by ``create_app``)."""
    app.state["services"] = Services(settings)


async def on_startup(app: Litestar) -> None:
    """Open the catalog off the event loop (schema migrations may take a moment)."""
    import anyio.to_thread

    services = services_of(app.state)
    try:
        await anyio.to_thread.run_sync(services.open)
        if not services.settings.api.redis_url:
            await anyio.to_thread.run_sync(services.resume_embedded_jobs)
        else:
            await anyio.to_thread.run_sync(services.recover_jobs)
    except Exception as exc:
        # Keep serving: /health answers, /ready says what is wrong, and the catalog is
        # opened again by the first request that needs it.
        log.warning("the catalog could not be opened at start-up: %s", exc)


async def on_shutdown(app: Litestar) -> None:
    """Release the catalog's connections."""
    services_of(app.state).close()


dependencies: dict[str, Any] = {
    "settings": Provide(provide_settings, sync_to_thread=False),
    "sessions": Provide(provide_sessions, sync_to_thread=True),
    "services": Provide(provide_services, sync_to_thread=False),
}
