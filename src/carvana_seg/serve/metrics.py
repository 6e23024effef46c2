"""Prometheus metrics of the server (``GET /metrics``): requests by path and status, latency, in flight, queued."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# latency buckets from a cached 96x64 demo model (~50 ms) to a big model on a loaded CPU (~30 s)
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    paths = (
        "/",
        "/healthz",
        "/metrics",
        "/v1/model",
        "/v1/cutout",
        "/v1.0/removebg",
        "/api/remove",
        "/docs",
        "/openapi.json",
    )

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "carvana_seg_requests", "HTTP requests by path and status", ["path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "carvana_seg_request_seconds", "request latency by path", ["path"], buckets=BUCKETS, registry=self.registry
        )
        self.in_flight = Gauge("carvana_seg_in_flight", "requests being handled", registry=self.registry)
        self.queued = Gauge("carvana_seg_queued", "cut-outs waiting for an inference slot", registry=self.registry)
        self.ready = Gauge("carvana_seg_ready", "1 once the models are loaded", registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
