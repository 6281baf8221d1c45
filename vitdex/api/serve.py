"""``vitdex serve``: run the API under uvicorn."""

from __future__ import annotations

import click


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
def serve_command(host: str | None, port: int | None, workers: int) -> None:
    """Serve the HTTP API (OpenAPI docs under /schema)."""
    import uvicorn

    from vitdex.api.protocol import http_protocol
    from vitdex.config import load_settings

    # Read here only to resolve defaults and fail early on bad settings; every worker
    # builds its own app from the environment.
    api = load_settings().api
    uvicorn.run(
        "vitdex.api.app:create_app",
        factory=True,
        host=host or api.host,
        port=port or api.port,
        workers=workers,
        # Requests uvicorn refuses before the app sees them get the API's JSON error too.
        http=http_protocol(),
        log_level="info",
    )
