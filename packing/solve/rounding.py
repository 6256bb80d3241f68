"""Whole servers from the configuration LP: iterated rounding, and a greedy cover for what the
time leaves. The bound is not touched: it was proven on the full problem."""
from __future__ import annotations

import time
from typing import Dict

import numpy as np

from packing.solve.columngen import ColumnGeneration

ROUND_UP_FROM = 0.35  # a column at 0.65 or more counts as a whole server
# A rounding pass in which fewer than this share of the LP support rounds up by itself also fixes
# the largest columns up to that share, and always at least the largest one (a dive). 0, which
# rounded best here, means: only when no column rounds up by itself, and then just the largest.
DIVE_FRACTION = 0.0
ROUNDS_PER_PASS = 4  # pricing rounds on each restricted LP


def iterated_rounding(cg: ColumnGeneration, deadline: float) -> Dict[int, int]:
    """Keep every pattern's whole servers, re-solve the LP (with a few pricing rounds) for the
    models left, and repeat; when the LP has no whole server, round up its largest column. What
    the deadline leaves is covered greedily. Starts from the LP as `cg` last read it; restores
    the master's demand rows after. Returns servers per pattern index."""
    # A class of models hot everywhere holds alike hot models (same replicas): each member
    # gets a server of its own.
    chosen: Dict[int, int] = {}
    for i in np.flatnonzero(cg.pure_hot):
        j = cg.index_of(cg.hot_pattern(int(i), int(cg.hot_shape[i])))
        chosen[j] = chosen.get(j, 0) + int(cg.cls.count[i])
    left = cg.demand.copy()
    while left.sum() > 0 and time.perf_counter() < deadline:
        x = cg.lp_values
        whole = np.floor(x + ROUND_UP_FROM).astype(int)
        support = np.flatnonzero(x > 1e-9)
        if support.size == 0:
            break
        want = max(1, int(DIVE_FRACTION * support.size))
        if int((whole > 0).sum()) < want:
            for j in support[np.argsort(-x[support], kind="stable")][:want]:
                whole[j] = max(whole[j], 1)
        for j in np.flatnonzero(whole):
            chosen[int(j)] = chosen.get(int(j), 0) + int(whole[j])
            for i, a in cg.patterns[j].counts:
                left[i] -= int(whole[j]) * a
        left = np.maximum(left, 0)
        if left.sum() == 0:
            break
        cg.master.set_demand(left)
        cg.iterate(deadline, max_rounds=ROUNDS_PER_PASS)
        cg.read_lp()
    for j, n in greedy_cover(cg, left).items():
        chosen[j] = chosen.get(j, 0) + n
    cg.master.set_demand(cg.demand)
    return chosen


def round_now(cg: ColumnGeneration, deadline: float) -> Dict[int, int]:
    """Iterated rounding of the LP as it stands, part-way through column generation. The master's
    demand rows are restored after, so the loop goes on over the same LP, with the columns the
    rounding priced added (valid columns, though they slow its re-solves: packing/solve/solver.py,
    ROUNDING_CHECKPOINTS); its values and duals are read again before they are used."""
    cg.read_lp()
    return iterated_rounding(cg, deadline)


def greedy_cover(cg: ColumnGeneration, left: np.ndarray) -> Dict[int, int]:
    """Servers for the models `left` (per class), one pod at a time, each on the shape where it
    earns the most per dollar, with the LP's duals as values so the scarce classes go first."""
    chosen: Dict[int, int] = {}
    left = left.copy()
    values = np.maximum(cg.lp_duals, 1e-6)
    cls, shapes = cg.cls, cg.shapes
    while left.sum() > 0:
        best = None
        for t, pr in enumerate(cg.pricing.pricers):
            per_pod = shapes[t].price / shapes[t].slots
            for i in np.flatnonzero(cls.eligible[:, t] & cls.hot[:, t] & (left > 0)):
                p = cg.hot_pattern(int(i), t)
                if best is None or values[i] / (per_pod * p.replicas) > best[0]:
                    best = (values[i] / (per_pod * p.replicas), p)
            if pr.items.size == 0 or left[pr.items].sum() == 0:
                continue
            _, counts = pr.knapsack("hi").greedy(values[pr.items], ub=left[pr.items])
            if counts.any():
                score = float(np.dot(values[pr.items], counts)) / (per_pod * cg.R)
                if best is None or score > best[0]:
                    best = (score, cg.pattern_from_counts(t, pr.items, counts))
        if best is None:
            raise AssertionError("models left that no shape can take")
        j = cg.index_of(best[1])
        chosen[j] = chosen.get(j, 0) + 1
        for i, a in best[1].counts:
            left[i] = max(0, left[i] - a)
    return chosen
