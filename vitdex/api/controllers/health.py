"""Liveness, readiness and metrics: open to everyone, no API key."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from vitdex.api.deps import Services, services_of
from vitdex.api.schemas import HealthOut, ReadyOut
from vitdex.config import Settings


def _check_database(services: NamedDependency[Services]) -> str:
    from sqlalchemy import text

    with services.sessions() as session:
        session.execute(text("SELECT 1"))
    return "ok"


def _check_vectors(settings: Settings) -> str:
    v = settings.vectors
    if v.vector_backend == "qdrant" and v.qdrant_url:
        import httpx

        headers = {"api-key": v.qdrant_api_key} if v.qdrant_api_key else {}
        reply = httpx.get(f"{v.qdrant_url.rstrip('/')}/readyz", headers=headers, timeout=3)
        reply.raise_for_status()
        return "ok"
    # FAISS files (or Qdrant's local mode) live under a folder the process must write.
    folder = (
        (v.qdrant_path or settings.storage.home / "qdrant")
        if v.vector_backend == "qdrant"
        else settings.storage.home / "faiss"
    )
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OSError(f"{folder} is not a writable folder")
    return "ok"


def _check_queue(settings: Settings) -> str:
    url = settings.api.redis_url
    if not url:
        return "ok (no Redis: jobs run in-process)"
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return "ok"


class HealthController(Controller):
    """``/health``, ``/ready`` and ``/metrics``."""

    tags: Sequence[str] = ["health"]

    @get("/health", sync_to_thread=False)
    def health(self) -> HealthOut:
        """The process is alive (touches nothing else)."""
        return HealthOut(status="ok")

    @get("/ready", sync_to_thread=True)
    def ready(self, services: NamedDependency[Services]) -> Response[ReadyOut]:
        """Database, vector store and queue are reachable; 503 naming what is not."""
        checks: dict[str, str] = {}
        probes: dict[str, Any] = {
            "database": lambda: _check_database(services),
            "vectors": lambda: _check_vectors(services.settings),
            "queue": lambda: _check_queue(services.settings),
        }
        ok = True
        for name, probe in probes.items():
            try:
                checks[name] = probe()
            except Exception as exc:
                ok = False
                # First line only: enough to act on, no driver dumps.
                reason = (str(exc).strip().splitlines() or [""])[0][:200]
                checks[name] = f"failed: {type(exc).__name__}: {reason}"
        return Response(ReadyOut(ready=ok, checks=checks), status_code=200 if ok else 503)

    @get("/metrics", sync_to_thread=True, include_in_schema=False)
    def metrics(self, state: State) -> Response[bytes]:
        """Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST

        body = state["metrics"].render()
        return Response(body, media_type=CONTENT_TYPE_LATEST)


__all__ = ["HealthController", "services_of"]
