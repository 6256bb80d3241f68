"""Prometheus metrics on the server's own registry (GET /metrics), so several apps in one process never collide."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("modelfleet_requests", "Inference requests by model, protocol and HTTP status code",
                                ["model", "protocol", "code"], registry=r)
        self.latency = Histogram("modelfleet_request_seconds", "Inference request latency, arrival to response",
                                 ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=r)
        self.wait = Histogram("modelfleet_queue_wait_seconds", "Time a request's rows waited in the batching queue",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("modelfleet_batch_size", "Rows per forward", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.forward_s = Histogram("modelfleet_forward_seconds", "Time of one batched forward", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.depth = Gauge("modelfleet_queue_rows", "Rows waiting in the batching queue", ["model"], registry=r)
        self.expired_total = Counter("modelfleet_expired_rows", "Requests dropped from the queue past their deadline",
                                     ["model"], registry=r)
        self.inflight = Gauge("modelfleet_inflight_requests", "Inference requests being handled", registry=r)
        self.loaded = Gauge("modelfleet_models_loaded", "Assigned models loaded and ready", registry=r)
        self.failed = Gauge("modelfleet_models_failed", "Assigned models that failed to load", registry=r)
        self.loading = Gauge("modelfleet_models_loading", "Assigned models still loading", registry=r)

    def request(self, model: str, protocol: str, code: int, seconds: float) -> None:
        self.requests.labels(model, protocol, str(code)).inc()
        self.latency.labels(model, protocol).observe(seconds)

    def queue_wait(self, model: str, seconds: float) -> None:
        self.wait.labels(model).observe(seconds)

    def batch(self, model: str, rows: int, seconds: float) -> None:
        self.batch_rows.labels(model).observe(rows)
        self.forward_s.labels(model).observe(seconds)

    def queue_depth(self, model: str, rows: int) -> None:
        self.depth.labels(model).set(rows)

    def expired(self, model: str) -> None:
        self.expired_total.labels(model).inc()

    def model_states(self, ready: int, failed: int, loading: int) -> None:
        self.loaded.set(ready)
        self.failed.set(failed)
        self.loading.set(loading)

    def render(self) -> bytes:
        return generate_latest(self.registry)
