"""Whole servers from the configuration LP: iterated rounding, and a greedy cover for what the
time leaves. The bound is not touched: it was proven on the full problem."""
from __future__ import annotations

import time
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from packing.solve.columngen import ColumnGeneration
from packing.solve.columns import Pattern

ROUND_UP_FROM = 0.35  # a column at 0.65 or more is a whole-server candidate
# A rounding pass in which fewer than this share of the LP support rounds up by itself also fixes
# the largest columns up to that share, and always at least the largest one (a dive). 0, which
# rounded best here, means: only when no column rounds up by itself, and then just the largest.
DIVE_FRACTION = 0.0
ROUNDS_PER_PASS = 4  # pricing rounds on each restricted LP
# A pass fixes its candidates one at a time, largest x first, each only while at least this share
# of its models is still needed (after the servers fixed before it): a server's models past the
# demand are wasted. Those skipped come back in the next pass's LP, over what is then left. 0: fix
# every candidate (with RESIDUAL_COEFFICIENTS on, 0 and 0.9 rounded alike on the mixed 3,040 catalogue).
USEFUL_FRACTION = 0.9
# The restricted LPs see only what is left: a column's coefficient in class i's row is at most the
# models of i left, and pricing puts no more than those in a pod. Off, the LP covers the last few
# models of a class with a sliver (x 0.1-0.2) of a column holding many of them, and the dive rounds
# that up to a server whose models are 12-25% needed. A/B on the mixed 3,040 catalogue (seed 7, 2
# shared cores, 2026-12-04, 3 runs a setting at 15 s, 2-3 at 60 s, interleaved; on / off with
# USEFUL_FRACTION): the rounding's pods $27.9-28.2/h at 60 s against $32.1-33.6/h; median plans
# $28.73 / $29.41/h at 15 s, $30.58 / $30.84/h with 50/100/250 ms budgets; at 60 s $30.75 / $31.21/h
# with budgets and $30.63 / $29.94/h without, where emptying part-filled servers won back most of
# what the old rounding over-covered and re-homing the few inf2 pods decided the rest. Its
# re-solves are slower (the basis no longer fits the cut LP), so at 15 s the greedy cover takes
# more of the models.
RESIDUAL_COEFFICIENTS = True


def iterated_rounding(cg: ColumnGeneration, deadline: float, round_up_from: float = ROUND_UP_FROM,
                      useful: float = USEFUL_FRACTION) -> Dict[int, int]:
    """Round up every column at 1 - `round_up_from` or more and fix those servers one at a time,
    largest first, skipping any of which less than `useful` of its models is still needed (`fix_servers`); re-solve
    the LP (with a few pricing rounds) for the models left, over columns and pods cut down to
    them (`restrict`), and repeat; when the LP has no whole server, round up its largest column
    (a dive). What the deadline leaves is covered greedily. Starts from the LP as `cg` last read
    it; restores the master and pricing after. Returns servers per pattern index."""
    # A class of models hot everywhere holds alike hot models (same replicas): each member
    # gets a server of its own.
    chosen: Dict[int, int] = {}
    for i in np.flatnonzero(cg.pure_hot):
        j = cg.index_of(cg.hot_pattern(int(i), int(cg.hot_shape[i])))
        chosen[j] = chosen.get(j, 0) + int(cg.cls.count[i])
    left = cg.demand.copy()
    while left.sum() > 0 and time.perf_counter() < deadline:
        x = cg.lp_values
        whole = np.floor(x + round_up_from).astype(int)
        support = np.flatnonzero(x > 1e-9)
        if support.size == 0:
            break
        want = max(1, int(DIVE_FRACTION * support.size))
        if int((whole > 0).sum()) < want:
            for j in support[np.argsort(-x[support], kind="stable")][:want]:
                whole[j] = max(whole[j], 1)
        fixed = fix_servers(cg, x, whole, left, useful)
        if not fixed:
            break  # no candidate holds a model left: the greedy cover takes the rest
        for j, n in fixed.items():
            chosen[j] = chosen.get(j, 0) + n
        if left.sum() == 0:
            break
        restrict(cg, left)
        cg.iterate(deadline, max_rounds=ROUNDS_PER_PASS, stop_lp=True)
        cg.read_lp(deadline)
    for j, n in greedy_cover(cg, left).items():
        chosen[j] = chosen.get(j, 0) + n
    restrict(cg, cg.demand)
    return chosen


def restrict(cg: ColumnGeneration, left: np.ndarray) -> None:
    """The master and the pricing over the models `left`; `restrict(cg, cg.demand)` restores them."""
    cg.master.restrict(left, cut_columns=RESIDUAL_COEFFICIENTS)
    if RESIDUAL_COEFFICIENTS:
        cg.pricing.cap(left)


def fix_servers(cg: ColumnGeneration, x: np.ndarray, whole: np.ndarray, left: np.ndarray,
                useful: float = USEFUL_FRACTION) -> Dict[int, int]:
    """The servers a pass fixes (pattern -> count) of the `whole` servers it rounds to, one at a
    time in decreasing x, each while `useful` of its models are in `left` (taken off it as
    they are fixed), and cut down to those; when that fixes none, the most useful one, so a pass
    fixes a server unless none of them holds a model left."""
    fixed: Dict[int, int] = {}
    candidates = sorted((int(j) for j in np.flatnonzero(whole)), key=lambda j: -x[j])
    for j in candidates:
        for _ in range(int(whole[j])):
            share = useful_share(cg, j, left)
            if share == 0 or share < useful - 1e-9:
                break
            take(cg, j, left, fixed)
    if not fixed and candidates:
        j = max(candidates, key=lambda j: useful_share(cg, j, left))
        if useful_share(cg, j, left) > 0:
            take(cg, j, left, fixed)
    return fixed


def useful_share(cg: ColumnGeneration, j: int, left: np.ndarray) -> float:
    """The share of server j's models that `left` still needs."""
    counts = cg.patterns[j].counts
    return sum(min(a, int(left[i])) for i, a in counts) / sum(a for _, a in counts)


def take(cg: ColumnGeneration, j: int, left: np.ndarray, fixed: Dict[int, int]) -> None:
    """One server of pattern j, without its models that `left` does not need (so re-homing may
    move it to a smaller size): counted in `fixed`, its models taken off `left`."""
    p = cg.patterns[j]
    kept = tuple((i, min(a, int(left[i]))) for i, a in p.counts if left[i] > 0)
    if kept != p.counts:
        cut = sum(float(cg.cls.h_hi[i, p.shape]) * a for i, a in p.counts) - sum(float(cg.cls.h_hi[i, p.shape]) * a for i, a in kept)
        j = cg.index_of(Pattern(p.shape, kept, p.replicas, p.host_per_pod - cut))
    fixed[j] = fixed.get(j, 0) + 1
    for i, a in cg.patterns[j].counts:
        left[i] -= a


def greedy_cover(cg: ColumnGeneration, left: np.ndarray) -> Dict[int, int]:
    """Servers for the models `left` (per class), one pod at a time, each on the shape where it
    earns the most per dollar, with the LP's duals as values so the scarce classes go first; on
    the shapes the LP may use (not those closed for part-used nodes, unless no other takes a model)."""
    chosen: Dict[int, int] = {}
    left = left.copy()
    values = np.maximum(cg.lp_duals, 1e-6)
    every = range(len(cg.shapes))
    open_shapes = [t for t in every if t not in cg.master.closed]
    while left.sum() > 0:
        best = cover_one(cg, left, values, open_shapes)
        if best is None:
            best = cover_one(cg, left, values, every)
        if best is None:
            raise AssertionError("models left that no shape can take")
        j = cg.index_of(best)
        chosen[j] = chosen.get(j, 0) + 1
        for i, a in best.counts:
            left[i] = max(0, left[i] - a)
    return chosen


def cover_one(cg: ColumnGeneration, left: np.ndarray, values: np.ndarray, shapes: Iterable[int]) -> Optional[Pattern]:
    """The server for models `left` that earns the most per dollar of its pods, on one of `shapes`."""
    cls = cg.cls
    best: Optional[Tuple[float, Pattern]] = None
    for t in shapes:
        pr = cg.pricing.pricers[t]
        per_pod = cg.shapes[t].price / cg.shapes[t].slots
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
    return None if best is None else best[1]
