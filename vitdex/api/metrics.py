"""Prometheus metrics: request latency and counts by route, catalog and queue gauges."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vitdex.jobs.queue import rq_queue_name

if TYPE_CHECKING:
    from vitdex.api.deps import Services

log = logging.getLogger("vitdex.api")

#: Latency buckets (seconds): cached lookups take milliseconds, model queries up to seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def queue_depth(redis_url: str | None, queue_name: str) -> int:
    """Jobs waiting in the rq queue (0 without Redis): ``LLEN rq:queue:<name>``."""
    if not redis_url:
        return 0
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return int(client.llen(f"rq:queue:{queue_name}"))
    finally:
        client.close()


class CatalogCollector(Collector):
    """Gauges read at scrape time: images per status, queue depth."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        """Yield the current values (a failing source is skipped and logged)."""
        from vitdex.db import repo

        images = GaugeMetricFamily(
            "vitdex_images", "Images in the catalog by status", labels=["status"]
        )
        try:
            with self.services.sessions() as session:
                counts = repo.status_counts(session)
            for status, n in sorted(counts.items()):
                images.add_metric([status], n)
            yield images
            yield GaugeMetricFamily(
                "vitdex_images_indexed", "Images with vectors", value=counts.get("indexed", 0)
            )
        except Exception as exc:
            log.warning("metrics: catalog unavailable: %s", exc)
        settings = self.services.settings
        try:
            depth = queue_depth(settings.api.redis_url, rq_queue_name(settings))
        except Exception as exc:
            log.warning("metrics: queue unavailable: %s", exc)
        else:
            yield GaugeMetricFamily("vitdex_queue_depth", "Jobs waiting in the queue", value=depth)


class Metrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self, services: Services) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "vitdex_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "vitdex_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.registry.register(CatalogCollector(services))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        labels = (method, route, str(status))
        self.latency.labels(*labels).observe(seconds)
        self.requests.labels(*labels).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def metrics_middleware(get_metrics: Callable[[Scope], Metrics]) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware timing every HTTP request by its route template and status."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            status = 500
            start = time.perf_counter()

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                # The template (/api/v1/images/{image_id:int}), not the path: bounded labels.
                route: Any = scope.get("path_template") or "unmatched"
                get_metrics(scope).observe(
                    str(scope.get("method", "")), str(route), status, time.perf_counter() - start
                )

        return middleware

    return factory
