"""Prometheus metrics on the server's own registry (GET /metrics), so several apps in one process never collide.

Names follow Prometheus conventions (base units: seconds and bytes; counters end in _total). Labels stay
bounded: `model` takes only the server's MODEL_IDS (from the plan) or "unknown", `protocol` v1 or v2, `code` the
HTTP status. charts/monitoring.py writes alert rules and a dashboard against these exact names: rename none.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from contracts.measures import resident_memory_mib

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MIB = 2**20


def resident_memory_bytes() -> float:
    """This process's resident memory in bytes, read at each scrape; NaN where it cannot be read (not Linux)."""
    try:
        return resident_memory_mib() * MIB
    except (OSError, ValueError, IndexError):
        return math.nan


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_ids: Iterable[str] = (), memory_budget_mib: Optional[float] = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._children: Dict[Tuple[int, Tuple[str, ...]], Any] = {}
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
        self.inflight = Gauge("modelfleet_inflight_requests",
                              "Inference requests being handled (body being read, queued or running), by model; "
                              "sum over models for the pod", ["model"], registry=r)
        self.load_failures = Counter("modelfleet_model_load_failures", "Times an assigned model failed to load",
                                     ["model"], registry=r)
        self.loaded = Gauge("modelfleet_models_loaded", "Assigned models loaded and ready", registry=r)
        self.failed = Gauge("modelfleet_models_failed", "Assigned models that failed to load", registry=r)
        self.loading = Gauge("modelfleet_models_loading", "Assigned models still loading", registry=r)
        self.resident_memory = Gauge("modelfleet_resident_memory_bytes", "Resident memory of the server process",
                                     registry=r)
        self.resident_memory.set_function(resident_memory_bytes)
        self.memory_budget = Gauge("modelfleet_memory_budget_bytes",
                                   "Host memory budget of the process (MEMORY_BUDGET_MIB); 0: no budget set", registry=r)
        self.memory_budget.set((memory_budget_mib or 0) * MIB)
        # Every assigned model's series exist from the start at 0: increase() over a counter that first appears
        # at 1 sees no increase, and a gauge missing until the first request reads as "no data", not 0.
        for model_id in model_ids:
            self.inflight.labels(model_id)
            self.load_failures.labels(model_id)

    def _child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), looked up once: labels() validates and locks on every call, and a request touches
        eight series. The label sets are bounded (assigned models or "unknown", two protocols, status codes)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, model: str, protocol: str, code: int, seconds: float) -> None:
        self._child(self.requests, model, protocol, str(code)).inc()
        self._child(self.latency, model, protocol).observe(seconds)

    def request_started(self, model: str) -> None:
        self._child(self.inflight, model).inc()

    def request_finished(self, model: str) -> None:
        self._child(self.inflight, model).dec()

    def queue_wait(self, model: str, seconds: float) -> None:
        self._child(self.wait, model).observe(seconds)

    def batch(self, model: str, rows: int, seconds: float) -> None:
        self._child(self.batch_rows, model).observe(rows)
        self._child(self.forward_s, model).observe(seconds)

    def queue_depth(self, model: str, rows: int) -> None:
        self._child(self.depth, model).set(rows)

    def expired(self, model: str) -> None:
        self._child(self.expired_total, model).inc()

    def load_failed(self, model: str) -> None:
        self._child(self.load_failures, model).inc()

    def model_states(self, ready: int, failed: int, loading: int) -> None:
        self.loaded.set(ready)
        self.failed.set(failed)
        self.loading.set(loading)

    def render(self) -> bytes:
        return generate_latest(self.registry)
