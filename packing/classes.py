"""Classes of alike models, the rows of the configuration LP.

Models whose memory and load fall in the same narrow geometric buckets on every processor, with
the same eligible shapes, form a class. Each class carries two representatives per shape:
`hi` (the members' maxima: a pattern feasible with hi values is feasible for any member, so plans
built from hi columns are always valid) and `lo` (the minima: the LP over lo values relaxes the
real problem, so bounds computed with lo values are valid lower bounds). A model that is hot on
some shape stays a class of its own, since it gets a server of its own there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import numpy as np

from packing.demand import Demand

MEMORY_FLOOR_MIB = 1.0
LOAD_FLOOR = 2e-4  # of the utilisation cap: loads below it share one bucket


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

    @property
    def exact(self) -> bool:
        """True when every class's members are identical, so hi == lo."""
        return all(np.array_equal(a, b) for a, b in ((self.d_hi, self.d_lo), (self.h_hi, self.h_lo), (self.u_hi, self.u_lo)))


def _bucket(x: np.ndarray, floor: float, ratio: float) -> np.ndarray:
    out = np.full(x.shape, -1, dtype=np.int64)
    big = x > floor
    out[big] = np.floor(np.log(x[big] / floor) / math.log1p(ratio)).astype(np.int64)
    return out


def build_classes(dem: Demand, utilisation_cap: float, resolution: float = 0.005) -> Classes:
    """Group models; `resolution` is the relative width of a bucket (0 keeps every distinct model apart)."""
    n = len(dem.model_ids)
    cols = [dem.eligible.astype(np.int64), dem.hot.astype(np.int64)]
    hot_any = dem.hot.any(axis=1)
    cols.append(np.where(hot_any, np.arange(n), -1)[:, None])
    if resolution <= 0:
        cols.append(np.arange(n)[:, None])
    else:
        # One bucket per processor suffices for memory; load is bucketed per shape since cores differ.
        seen = set()
        for j, s in enumerate(dem.shapes):
            if s.processor not in seen:
                seen.add(s.processor)
                cols.append(_bucket(dem.d[:, j], MEMORY_FLOOR_MIB, resolution)[:, None])
                cols.append(_bucket(dem.h[:, j], MEMORY_FLOOR_MIB, resolution)[:, None])
            cols.append(_bucket(dem.u[:, j], LOAD_FLOOR * utilisation_cap, resolution)[:, None])
    keys = np.concatenate(cols, axis=1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
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
    k = len(dem.shapes)

    def reduce(a: np.ndarray, op) -> np.ndarray:
        init = -np.inf if op is np.maximum else np.inf
        out = np.full((c, k), init)
        op.at(out, cls, a)
        return out

    heads = np.array([m[0] for m in members])
    return Classes(
        members=members, count=count, eligible=dem.eligible[heads], hot=dem.hot[heads],
        replicas=dem.replicas[heads],
        d_hi=reduce(dem.d, np.maximum), d_lo=reduce(dem.d, np.minimum),
        h_hi=reduce(dem.h, np.maximum), h_lo=reduce(dem.h, np.minimum),
        u_hi=reduce(dem.u, np.maximum), u_lo=reduce(dem.u, np.minimum),
    )
