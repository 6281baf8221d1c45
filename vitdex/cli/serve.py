"""``vitdex serve`` and ``vitdex worker``: the long-running processes, with the group's
flags applied like every other command's."""

from __future__ import annotations

import logging
import os

import click

from vitdex.cli.common import Context, handle_errors

#: What uvicorn imports in each server process (the CLI does not import the API itself).
APP_FACTORY = "vitdex.api.app:create_app"
HTTP_PROTOCOL = "vitdex.api.serve:HTTP_PROTOCOL"


@click.command("serve")
@click.option("--host", default=None, help="Interface to bind (default: VITDEX_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: VITDEX_PORT or 8000).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes; each loads its own copy of the model when needed.",
)
@click.pass_obj
@handle_errors
def serve_command(obj: Context, host: str | None, port: int | None, workers: int) -> None:
    """Serve the HTTP API (OpenAPI docs under /schema)."""
    import uvicorn

    # Built here to resolve the defaults and to fail before uvicorn starts on bad ones.
    api = obj.settings.api
    # The app factory is an edge of its own, in this process or in each worker process:
    # it builds its settings from the environment, so the flags go there first.
    os.environ.update(obj.flag_environment())
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host or api.host,
        port=port or api.port,
        workers=workers,
        # Requests uvicorn refuses before the app sees them get the API's JSON error too.
        http=HTTP_PROTOCOL,
        log_level="info",
    )


@click.command("worker")
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option("--no-preload", is_flag=True, help="Load the model on the first job instead.")
@click.pass_obj
@handle_errors
def worker_command(obj: Context, burst: bool, no_preload: bool) -> None:
    """Run queued index, cluster, export and training jobs (needs --redis-url or
    VITDEX_REDIS_URL), with this command's settings."""
    from vitdex.jobs.worker import run_worker

    # A worker reports each job it takes and each Redis outage: INFO unless -v asks more.
    root = logging.getLogger()
    root.setLevel(min(root.getEffectiveLevel(), logging.INFO))
    run_worker(obj.settings, burst=burst, preload=not no_preload)
