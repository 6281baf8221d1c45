"""Index jobs: the function a queue runs for a job row of kind ``index``.

It takes the settings of the process that runs it and the job id, so rq can enqueue it
by dotted path (and the id alone) from a process that never imports torch.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import ModelSettings, Settings
from vitdex.db import jobs as job_sql
from vitdex.errors import ConfigError
from vitdex.indexer.embedder import Embedder
from vitdex.jobs.runner import CancelPoller, run_job_guarded

log = logging.getLogger(__name__)

#: Seconds between two reads of ``cancel_requested`` (a cancel takes effect at the next
#: batch after it is seen).
CANCEL_POLL_S = 0.5

_embedders: dict[tuple[Any, ...], Embedder] = {}
_embedders_lock = threading.Lock()


def _model_key(model: ModelSettings) -> tuple[Any, ...]:
    # Every field the embedder is built from: a worker serving two settings keeps two.
    return tuple(
        tuple(value) if isinstance(value, list) else value for value in model.model_dump().values()
    )


def cached_embedder(model: ModelSettings) -> Embedder:
    """The process's embedder for these model settings, created once (a worker loads the
    model for its first job and keeps it for every later one)."""
    key = _model_key(model)
    with _embedders_lock:
        embedder = _embedders.get(key)
        if embedder is None:
            embedder = Embedder.from_settings(model)
            _embedders[key] = embedder
        return embedder


def run_index_job(settings: Settings, job_id: int) -> None:
    """Run the index job ``job_id``: params ``{"paths": [...], "reembed": bool}``.

    Progress goes to the job row batch by batch; a cancel request stops it at its next
    batch with the catalog consistent (state ``cancelled``).
    """

    def work(sessions: sessionmaker[Session]) -> None:
        from vitdex.indexer.pipeline import Indexer

        with sessions() as session:
            params = dict(job_sql.get_job(session, job_id).params or {})
        paths = [Path(p) for p in params.get("paths") or []]
        if not paths:
            raise ConfigError("index job has no paths")
        stop = CancelPoller(sessions, job_id, interval=CANCEL_POLL_S)
        indexer = Indexer(settings, sessions, cached_embedder(settings.model), should_stop=stop)
        # The indexer sets the row running, writes progress and closes it.
        indexer.run(
            paths,
            reembed=bool(params.get("reembed", False)),
            retry_failed=bool(params.get("retry_failed", False)),
            job_id=job_id,
        )

    run_job_guarded(settings, job_id, work, what="index")
