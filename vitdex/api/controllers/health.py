"""Liveness, readiness and metrics: open to everyone, no API key."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from vitdex.api.deps import Services, services_of
from vitdex.api.schemas import HealthOut, ReadyOut
from vitdex.config import Settings


def _check_vectors(settings: Settings) -> str:
    from vitdex.vectors.factory import check_ready

    check_ready(settings)
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

    @get(
        "/health",
        sync_to_thread=False,
        operation_id="health",
        summary="Liveness",
        description="The process is alive (touches nothing else).",
    )
    def health(self) -> HealthOut:
        """The process is alive (touches nothing else)."""
        return HealthOut(status="ok")

    @get(
        "/ready",
        sync_to_thread=True,
        operation_id="ready",
        summary="Readiness of the backends",
        description="Database, vector store and queue are reachable; 503 naming what is not.",
    )
    def ready(self, services: NamedDependency[Services]) -> Response[ReadyOut]:
        """Database, vector store and queue are reachable; 503 naming what is not."""
        checks: dict[str, str] = {}
        probes: dict[str, Callable[[], str]] = {
            "database": services.check_database,
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
