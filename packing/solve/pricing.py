"""Pricing: at the master's duals, the server pattern on each shape that earns the most.

Pricing shape t is a knapsack with three constraints (pod memory, utilisation, host memory for
models) and item values pi_i - r rho_t h_i (packing/solve/knapsack.py). Most rounds price it by
the knapsack's rounded LP; when that finds no column, HiGHS solves it as a MIP (to a 1e-3
relative gap within 2 s), so "no column prices out" means optimal to that gap, not exactly. Each
shape has two knapsacks: `hi` over the classes' largest members (its columns are valid for every
member) and `lo` over their smallest (its proven upper bounds serve the bound,
packing/solve/bound.py).
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple

import highspy
import numpy as np

from packing.model.classes import Classes
from packing.model.resources import NodeShape, pod_caps
from packing.solve.knapsack import Knapsack

INF = highspy.kHighsInf
COLUMNS_PER_ROUND = 3  # per shape: the knapsack's answer, then greedy answers over what it left out


class ShapePricer:
    """The pricing knapsacks of one shape, over the classes that may share its pods. Shapes
    whose pods face the same limits share one knapsack object (see `key`)."""

    _shared: Dict[tuple, Knapsack]

    def __init__(self, j: int, shape: NodeShape, cls: Classes, replicas: int, shared: Dict[tuple, Knapsack]):
        self.j, self.shape, self.r, self.cls = j, shape, replicas, cls
        self.items = np.flatnonzero(cls.eligible[:, j] & ~cls.hot[:, j])
        self._shared = shared
        self._keys: Dict[str, tuple] = {}

    def _arrays(self, side: str):
        c, j, it = self.cls, self.j, self.items
        d = (c.d_hi if side == "hi" else c.d_lo)[it, j]
        u = (c.u_hi if side == "hi" else c.u_lo)[it, j] / self.r
        g = (c.h_hi if side == "hi" else c.h_lo)[it, j]
        return d, u, g

    def key(self, side: str) -> tuple:
        """Two shapes price alike when items, memory and load caps match and their host caps
        either match or cannot bind (no pod fitting the memory cap reaches them)."""
        d, u, g = self._arrays(side)
        caps = pod_caps(self.shape)
        count = self.cls.count[self.items]
        most_host = min(float(np.dot(count, g)), caps[0] * float(np.max(g / np.maximum(d, 1e-12), initial=0.0)))
        host_cap = caps[2] if most_host > caps[2] else INF
        return (side, self.shape.processor, self.shape.cores_per_device, caps[0], caps[1], host_cap, self.items.tobytes())

    def knapsack(self, side: str) -> Knapsack:
        if side not in self._keys:
            self._keys[side] = self.key(side)
        key = self._keys[side]
        if key not in self._shared:
            d, u, g = self._arrays(side)
            caps = pod_caps(self.shape)[:2] + (key[5],)
            fit = np.minimum.reduce([np.floor(cap / np.maximum(x, 1e-12)) for x, cap in zip((d, u, g), caps, strict=True)])
            self._shared[key] = Knapsack(d, u, g, np.minimum(self.cls.count[self.items], fit), caps)
        return self._shared[key]

    def values(self, pi: np.ndarray, rho: float, side: str) -> Tuple[np.ndarray, float]:
        """Item values pi_i - r rho h_i, and the constant r rho base every pod pays."""
        h = (self.cls.h_hi if side == "hi" else self.cls.h_lo)[self.items, self.j]
        return pi[self.items] - self.r * rho * h, self.r * rho * self.shape.pod_base_mib

    def candidates(self, pi: np.ndarray, rho: float, exact: bool) -> List[Tuple[float, np.ndarray]]:
        """(value, counts over `items`) of this round's columns: the knapsack's answer, then
        further greedy answers over the classes it left out, so one round offers the master a
        whole packing at once."""
        knap = self.knapsack("hi")
        values, const = self.values(pi, rho, "hi")
        best, counts = knap.solve(values) if exact else knap.lp_round(values)
        out = [(best - const, counts)]
        for _ in range(COLUMNS_PER_ROUND - 1):
            values = values.copy()
            values[counts > 0] = 0.0
            best, counts = knap.greedy(values)
            if not counts.any():
                break
            out.append((best - const, counts))
        return out


class Pricing:
    """One pricer per shape; shapes that price alike at the same duals answer once."""

    def __init__(self, cls: Classes, shapes: Sequence[NodeShape], min_replicas: int):
        shared: Dict[tuple, Knapsack] = {}
        self.pricers = [ShapePricer(j, s, cls, min_replicas, shared) for j, s in enumerate(shapes)]

    def __getitem__(self, t: int) -> ShapePricer:
        return self.pricers[t]

    def cap(self, most: np.ndarray) -> None:
        """Price pods of at most `most[i]` models of class i (none: no cap), as a rounding's
        restricted LPs need; `cap(counts)` restores. Only the column (`hi`) knapsacks: the
        bound's (`lo`) keep every model."""
        for pr in self.pricers:
            if pr.items.size:
                m = most[pr.items]
                pr.knapsack("hi").cap_counts(np.where(m > 0, m, INF))

    def offers(self, pi: np.ndarray, rho: np.ndarray, exact: bool) -> Iterator[Tuple[int, np.ndarray]]:
        """(shape, counts over its pricer's items) of every column worth offering at duals pi and
        rho (the host-memory price per shape); `exact`: the knapsack MIP, not its rounded LP."""
        seen: Dict[tuple, list] = {}
        for t, pr in enumerate(self.pricers):
            if pr.items.size == 0:
                continue
            key = (id(pr.knapsack("hi")), float(rho[t]) * pr.r, pr.shape.pod_base_mib)
            if key not in seen:
                seen[key] = pr.candidates(pi, rho[t], exact)
            for _, counts in seen[key]:
                if counts.any():
                    yield t, counts
