"""The two measurements that both ends of a check must take the same way.

- The nearest-rank percentile: tracing profiles a model's latency percentiles with it (tracing/measure.py),
  the plan is built from them, and the load test reports the served percentiles with it (loadtest/stats.py),
  so a measured P90 and a predicted one compare like with like.
- A process's resident memory: tracing measures an artifact's host memory as the resident memory its loading
  adds; the server charges its own resident memory against MEMORY_BUDGET_MIB before admitting models.

Standard library only: it runs inside the Neuron images too (Python 3.10).
"""
from __future__ import annotations

import math
import os
from typing import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (any order): the value at rank ceil(q * n) (1-based, rank 1 for q = 0)
    of the sorted values, a value that was actually observed; ValueError for no values or q outside [0, 1]."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))  # the tolerance keeps 0.9 * 10 at rank 9, not 10
    return ordered[min(rank, len(ordered)) - 1]


def resident_memory_mib() -> float:
    """This process's resident memory in MiB, from Linux's /proc/self/statm; OSError or ValueError where it cannot
    be read (the caller decides whether a missing figure is fatal)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
