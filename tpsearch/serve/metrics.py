"""Prometheus metrics of one server (prometheus_client, a registry of its own): requests and
their latency by endpoint and status, batch sizes and encoding time by index, queue depth, and
requests refused for overload."""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tpsearch_requests", "HTTP requests answered",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("tpsearch_request_seconds", "Time to answer a request",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("tpsearch_batch_size", "Queries encoded per forward pass",
                               ["index"], buckets=BATCH_BUCKETS, registry=r)
        self.encode = Histogram("tpsearch_encode_seconds", "Time of one batched forward pass",
                                ["index"], buckets=LATENCY_BUCKETS, registry=r)
        self.depth = Gauge("tpsearch_queue_depth", "Queries waiting for the encoder",
                           ["index"], registry=r)
        self.refused = Counter("tpsearch_overloaded", "Requests refused with 503 (queue full)",
                               ["index"], registry=r)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, index: str, size: int, seconds: float) -> None:
        self.batch.labels(index).observe(size)
        self.encode.labels(index).observe(seconds)

    def queue_depth(self, index: str, depth: int) -> None:
        self.depth.labels(index).set(depth)

    def overloaded(self, index: str) -> None:
        self.refused.labels(index).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
