"""The load test's maths: pure functions over recorded requests, no I/O.

Definitions (the report states them too):

- **Percentile**: nearest rank over ALL requests of a measurement, pooled. The q-th percentile of n
  latencies sorted ascending is the value at rank ceil(q * n) (1-based; rank 1 for q = 0): a latency
  that was actually observed, such that at least a fraction q of the requests took no longer. It is
  the definition tracing uses for the profiles the plan is built from, one function for both
  (contracts/measures.py), so measured and predicted P90s compare like with like. Percentiles of
  several clients or windows are never averaged: averaging per-client P90s is not the P90 of the
  requests (see tests/test_loadtest.py for a sample where the two differ).
- **Latency** of a request: from the moment it was due to be sent (open loop: its scheduled arrival;
  closed loop: when the client issued it) to the end of its response body. Open loop measures from
  the schedule, so a client that falls behind cannot hide queueing ("coordinated omission"); the lag
  is reported separately.
- **Throughput**: requests completed successfully (2xx) / wall time of the measured window, from
  its start to the completion of its last request.
- **Errors**: by HTTP status ("429", "503", ...) or by kind of failure without a status ("timeout",
  "connect", "protocol"). Percentiles are over the successful requests only; errors are counted.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from contracts.measures import percentile  # the one nearest-rank definition (tracing profiles with it too)

QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Sample:
    """One request: what it hit, when it was due and when it finished (seconds, one monotonic clock),
    and how it ended: an HTTP status, or `error` naming a failure without one."""

    model: str
    server: str
    start_s: float
    end_s: float
    status: Optional[int] = None
    error: Optional[str] = None
    lag_s: float = 0.0  # open loop: how late the client sent it after its scheduled time

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    @property
    def latency_ms(self) -> float:
        return (self.end_s - self.start_s) * 1000.0

    @property
    def outcome(self) -> str:
        return self.error if self.error is not None else str(self.status)


def percentiles(values: Sequence[float], quantiles: Iterable[float] = QUANTILES) -> Dict[str, float]:
    """{'p50': ..., 'p90': ...}: nearest rank, all from one sort."""
    ordered = sorted(values)
    out = {}
    for q in quantiles:
        out[quantile_name(q)] = percentile(ordered, q) if ordered else math.nan
    return out


def quantile_name(q: float) -> str:
    text = f"{q * 100:.10g}".replace(".", "_")
    return f"p{text}"


def pooled_percentile(groups: Iterable[Sequence[float]], q: float) -> float:
    """The percentile of all groups' values together (the right way to combine clients)."""
    pooled: List[float] = []
    for group in groups:
        pooled.extend(group)
    return percentile(pooled, q)


def throughput(completed: int, wall_s: float) -> float:
    """Completed requests per second of wall time (0 for an empty window)."""
    if completed < 0 or wall_s < 0:
        raise ValueError(f"throughput needs completed >= 0 and wall_s >= 0, got {completed} and {wall_s}")
    return completed / wall_s if wall_s > 0 else 0.0


@dataclass(frozen=True)
class Summary:
    """What one measurement (a mode, a concurrency step, a server's share) comes to."""

    requests: int
    ok: int
    errors: Dict[str, int]
    wall_s: float
    throughput_rps: float
    latency_ms: Dict[str, float]  # min, max, mean and the QUANTILES (p50, p90, p95, p99), over successful requests
    max_lag_ms: float = 0.0
    p99_lag_ms: float = 0.0

    @property
    def error_rate(self) -> float:
        return (self.requests - self.ok) / self.requests if self.requests else 0.0

    def to_dict(self) -> Dict[str, object]:
        return {"requests": self.requests, "ok": self.ok, "errors": dict(self.errors), "error_rate": self.error_rate,
                "wall_s": self.wall_s, "throughput_rps": self.throughput_rps, "latency_ms": dict(self.latency_ms),
                "max_lag_ms": self.max_lag_ms, "p99_lag_ms": self.p99_lag_ms}


def summarise(samples: Sequence[Sample], window: Optional[Tuple[float, float]] = None) -> Summary:
    """Pooled statistics of `samples`. `window` (start, end) is the measured window's wall clock; by default
    from the first request's start to the last one's end."""
    if window is None:
        window = (min(s.start_s for s in samples), max(s.end_s for s in samples)) if samples else (0.0, 0.0)
    wall = max(0.0, window[1] - window[0])
    good = [s.latency_ms for s in samples if s.ok]
    errors = Counter(s.outcome for s in samples if not s.ok)
    latency: Dict[str, float] = {}
    if good:
        latency = {"min": min(good), "max": max(good), "mean": sum(good) / len(good), **percentiles(good)}
    return Summary(requests=len(samples), ok=len(good), errors=dict(sorted(errors.items())), wall_s=wall,
                   throughput_rps=throughput(len(good), wall), latency_ms=latency,
                   max_lag_ms=max((s.lag_s * 1000.0 for s in samples), default=0.0),
                   p99_lag_ms=percentile([s.lag_s * 1000.0 for s in samples], 0.99) if samples else 0.0)


def by_key(samples: Iterable[Sample], key: str) -> Dict[str, List[Sample]]:
    """Samples grouped by `model` or `server`, in first-seen order."""
    out: Dict[str, List[Sample]] = {}
    for s in samples:
        out.setdefault(getattr(s, key), []).append(s)
    return out


# ---- open loop: Poisson arrivals ----
@dataclass(frozen=True)
class Arrival:
    at_s: float  # seconds after the start
    model: str


def poisson_schedule(rates: Mapping[str, float], duration_s: float, seed: int, max_requests: Optional[int] = None) -> List[Arrival]:
    """Arrivals of independent Poisson processes, one per model at `rates[model]` req/s, over [0, duration_s).

    Drawn as one Poisson process at the total rate whose arrivals pick a model with probability rate / total
    (the superposition of the per-model processes). Deterministic for a seed; cut at `max_requests`."""
    if duration_s < 0:
        raise ValueError(f"duration must be >= 0, got {duration_s}")
    for model, rate in rates.items():
        if rate < 0 or not math.isfinite(rate):
            raise ValueError(f"rate of {model} must be a finite number >= 0, got {rate}")
    models = [m for m, r in rates.items() if r > 0]
    weights = [rates[m] for m in models]
    total = sum(weights)
    if total <= 0:
        return []
    rng = random.Random(seed)
    out: List[Arrival] = []
    t = rng.expovariate(total)
    cumulative = _cumulative(weights)
    while t < duration_s and (max_requests is None or len(out) < max_requests):
        out.append(Arrival(t, models[_pick(cumulative, rng.random() * total)]))
        t += rng.expovariate(total)
    return out


def _cumulative(weights: Sequence[float]) -> List[float]:
    out, running = [], 0.0
    for w in weights:
        running += w
        out.append(running)
    return out


def _pick(cumulative: Sequence[float], x: float) -> int:
    import bisect

    return min(bisect.bisect_right(cumulative, x), len(cumulative) - 1)


def random_models(models: Sequence[str], count: int, seed: int) -> List[str]:
    """`count` models drawn uniformly with replacement, deterministic for a seed."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not models:
        return []
    rng = random.Random(seed)
    return [rng.choice(list(models)) for _ in range(count)]


@dataclass
class Curve:
    """The closed-loop sweep: one summary per concurrency."""

    points: List[Tuple[int, Summary]] = field(default_factory=list)

    def best_throughput(self) -> Optional[Tuple[int, Summary]]:
        return max(self.points, key=lambda p: p[1].throughput_rps, default=None)
