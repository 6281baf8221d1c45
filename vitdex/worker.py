"""The rq worker (``vitdex worker``): runs index, cluster, export and training jobs from Redis.

It does not fork per job (rq's :class:`~rq.SimpleWorker`): the ViT is loaded once, before
the first job, and a GPU context stays usable, neither of which survives rq's default
fork-per-job worker.
"""

from __future__ import annotations

import logging

import click

from vitdex.config import Settings, load_settings
from vitdex.errors import ConfigError, VitdexError

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, burst: bool = False, preload: bool = True) -> bool:
    """Work on this catalog's queue until stopped (or, with ``burst``, until empty).

    Returns whether any job was run. ``preload`` loads the embedder first, so the first
    job does not pay for it and a broken model setting fails here, loudly.
    """
    from redis import Redis
    from rq import Queue, SimpleWorker

    from vitdex.queue import rq_queue_name

    url = settings.api.redis_url
    if not url:
        raise ConfigError("the worker needs VITDEX_REDIS_URL (redis://host:6379/0)")
    if preload:
        from vitdex.indexer.jobs import cached_embedder

        cached_embedder(settings.model).load()
    connection = Redis.from_url(url)
    queue = Queue(rq_queue_name(settings), connection=connection)
    worker = SimpleWorker([queue], connection=connection)
    try:
        # with_scheduler: retries are scheduled (spaced out), and only a scheduler moves
        # them back onto the queue. Its process holds no model and touches no GPU.
        return bool(
            worker.work(
                burst=burst,
                with_scheduler=True,
                logging_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            )
        )
    finally:
        connection.close()


@click.command("worker")
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option("--no-preload", is_flag=True, help="Load the model on the first job instead.")
def worker_command(burst: bool, no_preload: bool) -> None:
    """Run queued index, cluster, export and training jobs (needs VITDEX_REDIS_URL)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_worker(load_settings(), burst=burst, preload=not no_preload)
    except VitdexError as exc:
        raise click.ClickException(exc.message) from None


if __name__ == "__main__":
    worker_command()
