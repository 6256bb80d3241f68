"""Classes of alike models, the rows of the configuration LP.

Models whose memory and load fall in the same narrow geometric buckets on every processor, with
the same eligible shapes, form a class. Each class carries two representatives per shape:
`hi` (the members' maxima: a pattern feasible with hi values is feasible for any member, so plans
built from hi columns are always valid) and `lo` (the minima: the LP over lo values relaxes the
real problem, so bounds computed with lo values are valid lower bounds). Models hot on a shape
share a class only when they need the same replicas there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import numpy as np

from packing.model.demand import Demand

MEMORY_FLOOR_MIB = 1.0
LOAD_FLOOR = 1e-3  # of the utilisation cap: loads below it share one bucket
MEMORY_BOUND_LOAD = 0.1


@dataclass
class Classes:
    members: List[np.ndarray]  # model indices per class, ascending
    count: np.ndarray  # [classes]
    eligible: np.ndarray  # [classes, shapes]
    hot: np.ndarray  # [classes, shapes]
    replicas: np.ndarray  # [classes, shapes] for hot classes (singletons)
    d_hi: np.ndarray
    d_lo: np.ndarray
    h_hi: np.ndarray
    h_lo: np.ndarray
    u_hi: np.ndarray
    u_lo: np.ndarray

    def __len__(self) -> int:
        return len(self.count)


def _bucket(x: np.ndarray, floor: float, ratio: float) -> np.ndarray:
    out = np.full(x.shape, -1, dtype=np.int64)
    big = x > floor
    out[big] = np.floor(np.log(x[big] / floor) / math.log1p(ratio)).astype(np.int64)
    return out


def _bits(flags: np.ndarray) -> np.ndarray:
    """Each row of booleans as integers, 60 flags per column (np.unique over wide rows is slow)."""
    out = []
    for start in range(0, flags.shape[1], 60):
        chunk = flags[:, start:start + 60].astype(np.int64)
        out.append(chunk @ (np.int64(1) << np.arange(chunk.shape[1], dtype=np.int64)))
    return np.stack(out, axis=1) if out else np.zeros((flags.shape[0], 1), np.int64)


def _group_ids(columns) -> np.ndarray:
    """Equal rows of the given columns get equal ids (in sorted order of the rows)."""
    n = len(columns[0])
    order = np.lexsort(tuple(reversed([np.asarray(c) for c in columns])))
    new = np.zeros(n, bool)
    if n:
        new[0] = True
    for c in columns:
        c = np.asarray(c)[order]
        new[1:] |= c[1:] != c[:-1]
    ids = np.empty(n, np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids


def _memory_runs(dem: Demand, coarse: np.ndarray, resolution: float) -> np.ndarray:
    first = {}
    for j, s in enumerate(dem.shapes):
        first.setdefault(s.processor, j)
    figures = np.concatenate([np.stack([dem.d[:, j], dem.h[:, j]], axis=1) for j in first.values()], axis=1)
    figures = np.maximum(figures, MEMORY_FLOOR_MIB)
    order = np.lexsort(tuple(figures[:, k] for k in reversed(range(figures.shape[1]))) + (coarse,))
    run = np.empty(len(coarse), np.int64)
    current, low, group = -1, None, None
    limit = 1.0 + resolution
    rows = figures.tolist()
    for m in order.tolist():
        f = rows[m]
        if group != coarse[m] or any(x > lo * limit for x, lo in zip(f, low, strict=True)):
            current += 1
            group, low = coarse[m], f
        run[m] = current
    return run


def build_classes(dem: Demand, utilisation_cap: float, resolution: float = 0.005, load_resolution: float = 0.05) -> Classes:
    """Group models; `resolution` is the relative width of a memory bucket, `load_resolution` of a
    load bucket (resolution 0: only identical models share a class)."""
    n = len(dem.model_ids)
    cols = [_bits(dem.eligible), _bits(dem.hot)]
    # Hot models are alike when they need the same replicas wherever they are hot: each gets a
    # server of its own, so beyond that their load does not matter there.
    hot_replicas = np.where(dem.hot, dem.replicas, 0)
    cols.append(_group_ids([hot_replicas[:, j] for j in range(hot_replicas.shape[1])])[:, None])
    if resolution <= 0:
        # Exact classes: only models identical in every figure share one.
        for a in (dem.d, dem.h, dem.u):
            cols.append(_group_ids([a[:, j] for j in range(a.shape[1])])[:, None])
    else:
        # Load: one coarse bucket on the model's largest load relative to the cap. Loads on
        # different shapes move together (the same rps times each processor's latency), so one
        # scalar keeps classes few; hi/lo are still taken per shape, so nothing is assumed.
        load = np.where(dem.eligible, dem.u, 0.0).max(axis=1) / utilisation_cap
        # A load far below the model's share of pod memory never binds before memory does, so
        # such loads share one bucket: rounded up to the bucket's maximum they still cost at most
        # MEMORY_BOUND_LOAD of a pod's load cap when the pod is full of them.
        caps = np.array([s.device_memory_cap_mib for s in dem.shapes])
        memory_share = np.where(dem.eligible, dem.d / caps, 0.0).max(axis=1)
        key = _bucket(load, LOAD_FLOOR, load_resolution)
        key[load <= MEMORY_BOUND_LOAD * memory_share] = -2
        cols.append(key[:, None])
        coarse = _group_ids([c[:, k] for c in cols for k in range(c.shape[1])])
        # Memory: within each coarse group, runs of models whose every memory figure stays
        # within `resolution` of the run's smallest (models sorted by their first figure).
        cols.append(_memory_runs(dem, coarse, resolution)[:, None])
    inverse = _group_ids([c[:, k] for c in cols for k in range(c.shape[1])])
    # Order classes by their first member so the numbering follows the catalogue (deterministic).
    first = np.full(inverse.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(n))
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    cls = rank[inverse]
    c = order.size
    sort_idx = np.argsort(cls, kind="stable")
    bounds = np.searchsorted(cls[sort_idx], np.arange(c + 1))
    members = [sort_idx[bounds[i]:bounds[i + 1]] for i in range(c)]
    count = np.diff(bounds)

    starts = bounds[:-1]

    def reduce(a: np.ndarray, op) -> np.ndarray:
        # Members are contiguous in sort_idx, so reduceat does per class what ufunc.at would, fast.
        return op.reduceat(a[sort_idx], starts, axis=0)

    heads = sort_idx[starts]
    return Classes(
        members=members, count=count, eligible=dem.eligible[heads], hot=dem.hot[heads],
        replicas=dem.replicas[heads],
        d_hi=reduce(dem.d, np.maximum), d_lo=reduce(dem.d, np.minimum),
        h_hi=reduce(dem.h, np.maximum), h_lo=reduce(dem.h, np.minimum),
        u_hi=reduce(dem.u, np.maximum), u_lo=reduce(dem.u, np.minimum),
    )
