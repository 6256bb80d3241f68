"""The pricing problem: what is the most valuable pod of one shape?

    maximise    sum_i v_i a_i
    subject to  sum_i w_i a_i <= W    (model memory of the pod)
                sum_i l_i a_i <= L    (utilisation of the pod)
                sum_i g_i a_i <= G    (host memory the node can give the pod)
                0 <= a_i <= b_i integer

Four answers, from cheap to costly: a greedy packing (`greedy`), the LP relaxation rounded down
and filled greedily (`lp_round`, most rounds' columns), a HiGHS MIP (`solve`) and a proven upper
bound (`upper_bound`, for the lower bound on the plan). None of the first three is exact: the MIP
stops at a 1e-3 relative gap or at its time limit (2 s unless given), whichever comes first, and
then returns the best packing it has (all zeros if it found none), so it may miss the optimum by
0.1% or, past the limit, by more. Every answer is a feasible packing (the MIP's to HiGHS's
feasibility tolerance). Only the upper bound is a proof: Lagrangian relaxation of the utilisation
and host rows with multipliers from the LP relaxation, then an exact dynamic programme over
memory with weights rounded *down* to a grid, which can only enlarge the feasible set, so the
result is always an upper bound; it is capped at the LP relaxation's value, itself a bound.
"""
from __future__ import annotations

import os
import sys
from typing import Tuple

import highspy
import numpy as np

INF = highspy.kHighsInf
EPS = 1e-9
DP_CELLS = 6000  # memory grid of the bounding DP: finer is tighter and slower


_BANNER_SHOWN = False


def quiet_banner() -> None:
    """Make (and drop) the process's first HiGHS object with stdout muted: every later one,
    PuLP's included, is then silent."""
    _quiet_first_highs()


def _quiet_first_highs() -> highspy.Highs:
    """HiGHS prints its banner on stdout when the first solver object is made, before any option
    can turn output off; the command-line tools' stdout is for their own summary."""
    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return highspy.Highs()
    _BANNER_SHOWN = True
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
            return highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def new_highs() -> highspy.Highs:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)  # set before the first run: later it is silently ignored
    return h


def run_for(h: highspy.Highs, seconds: float, integer: bool = False) -> None:
    """Run `h` for at most `seconds`. HiGHS (1.16) holds an LP's `time_limit` to the object's run
    time summed over all its runs, a MIP's to the run's own: a limit set once would stop every
    run of a long-lived LP after the first `seconds` in all (a pricing knapsack's LP re-solved
    for a few thousand rounds then answered every round with its time limit, and the bound with
    its trivial value), and one summed with the run time would let a MIP run on unbounded."""
    if not np.isfinite(seconds):
        h.setOptionValue("time_limit", INF)
    else:
        h.setOptionValue("time_limit", max(seconds, 0.0) + (0.0 if integer else h.getRunTime()))
    h.run()


def dp_bounded_knapsack(values: np.ndarray, weights: np.ndarray, counts: np.ndarray, capacity: int) -> float:
    """Exact max of sum v a subject to sum w a <= capacity, 0 <= a <= counts, for integer weights
    (a fractional weight is truncated: callers round down to a grid first). Binary splitting of
    the counts turns it into a 0-1 knapsack over about log2(b) + 1 copies per item. Items worth
    0 or less are never taken; weightless ones (weight 0 or less) always, all of them."""
    best = np.zeros(capacity + 1)
    free = 0.0
    for v, w, b in zip(values, weights, counts, strict=True):
        b = int(b)
        if v <= 0 or b <= 0:
            continue
        if w <= 0:
            free += v * b  # weightless on this grid: take them all
            continue
        chunk = 1
        while b > 0:
            k = min(chunk, b)
            kw = int(w) * k
            if kw <= capacity:
                np.maximum(best[kw:], best[:capacity + 1 - kw] + v * k, out=best[kw:])
            b -= k
            chunk *= 2
    return float(best[-1]) + free


class Knapsack:
    def __init__(self, weight: np.ndarray, load: np.ndarray, host: np.ndarray, ub: np.ndarray,
                 caps: Tuple[float, float, float], time_limit: float = 2.0):
        self.w, self.l, self.g = (np.asarray(x, float) for x in (weight, load, host))
        self.full_ub = np.asarray(ub, float)
        self.ub = self.full_ub
        self.caps = caps
        self.n = len(self.ub)
        self.idx = np.arange(self.n, dtype=np.int32)
        self.time_limit = time_limit  # each solve's
        self._mip = self._model(integer=True)
        self._lp = self._model(integer=False)
        self.grid = max(caps[0] / DP_CELLS, 1e-9)

    def cap_counts(self, most: np.ndarray) -> None:
        """From now on take at most `most[i]` of item i, and never more than the counts it was made with."""
        self.ub = np.minimum(self.full_ub, most)

    def _model(self, integer: bool) -> highspy.Highs:
        h = new_highs()
        if integer:
            h.setOptionValue("mip_rel_gap", 1e-3)
            # HiGHS 1.16's presolve, run again at a root restart (strengthenInequalities), ignores
            # the time limit: on one knapsack near the LP's convergence it ran for minutes. Three
            # rows need no presolve.
            h.setOptionValue("presolve", "off")
        n = self.n
        h.addCols(n, np.zeros(n), np.zeros(n), self.ub, 0, np.zeros(n, np.int32), np.array([], np.int32), np.array([]))
        for coeffs, cap in zip((self.w, self.l, self.g), self.caps, strict=True):
            h.addRow(-INF, cap, n, self.idx, coeffs)
        if integer and n:
            h.changeColsIntegrality(n, self.idx, np.full(n, highspy.HighsVarType.kInteger))
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        return h

    def _set(self, h: highspy.Highs, values: np.ndarray) -> np.ndarray:
        pos = values > EPS
        h.changeColsCost(self.n, self.idx, np.where(pos, values, 0.0))
        h.changeColsBounds(self.n, self.idx, np.zeros(self.n), np.where(pos, self.ub, 0.0))
        return pos

    def greedy(self, values: np.ndarray, start: np.ndarray | None = None,
               prices: np.ndarray | None = None, ub: np.ndarray | None = None) -> Tuple[float, np.ndarray]:
        """Fill greedily, from `start` (default empty), items in order of value per unit of size,
        each as many times as fits; size weighs an item's shares of the three caps by `prices`
        (default: its largest share of any one cap). Feasible, not optimal."""
        counts = np.zeros(self.n, int) if start is None else start.astype(int).copy()
        ub = self.ub if ub is None else np.minimum(self.ub, ub)
        pos = np.flatnonzero((values > EPS) & (ub > counts))
        if pos.size == 0:
            return float(np.dot(values, counts)), counts
        shares = np.stack([self.w[pos] / self.caps[0], self.l[pos] / self.caps[1], self.g[pos] / self.caps[2]])
        if prices is not None and prices.sum() > EPS:
            size = (prices / prices.sum()) @ shares + 1e-6 * shares.max(axis=0)
        else:
            size = shares.max(axis=0)
        order = pos[np.argsort(-values[pos] / np.maximum(size, 1e-12), kind="stable")]
        # Plain floats: this loop runs thousands of times per solve and numpy's per-call cost
        # on three-element arrays would dominate it.
        lw, ll, lg = (float(c) - float(x @ counts) for c, x in zip(self.caps, (self.w, self.l, self.g), strict=True))
        min_w, min_l, min_g = float(self.w[pos].min()), float(self.l[pos].min()), float(self.g[pos].min())
        w, lo, g, top = self.w.tolist(), self.l.tolist(), self.g.tolist(), ub.tolist()
        out = counts.tolist()
        for i in order.tolist():
            room = top[i] - out[i]
            if w[i] > 0:
                room = min(room, lw // w[i])
            if lo[i] > 0:
                room = min(room, ll // lo[i])
            if g[i] > 0:
                room = min(room, lg // g[i])
            take = int(room)
            if take > 0:
                out[i] += take
                lw -= take * w[i]
                ll -= take * lo[i]
                lg -= take * g[i]
                if lw < min_w or ll < min_l or lg < min_g:
                    break  # nothing more fits
        counts = np.array(out, dtype=int)
        return float(np.dot(values, counts)), counts

    def lp_round(self, values: np.ndarray) -> Tuple[float, np.ndarray]:
        """The LP relaxation rounded down (it has at most three fractional items), then filled
        greedily with the LP's resource prices: within a few items of the optimum, in a millisecond."""
        if self.n == 0 or not (values > EPS).any():
            return 0.0, np.zeros(self.n, int)
        pos = self._set(self._lp, values)
        run_for(self._lp, self.time_limit)
        if self._lp.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return self.greedy(values)
        x = np.asarray(self._lp.getSolution().col_value)
        start = np.where(pos, np.floor(x + 1e-9), 0.0)
        caps = np.array(self.caps)
        prices = np.abs(np.asarray(self._lp.getSolution().row_dual)) * np.where(np.isfinite(caps), caps, 0.0)
        return self.greedy(values, start=start, prices=prices)

    def solve(self, values: np.ndarray) -> Tuple[float, np.ndarray]:
        """The MIP's best answer: within 0.1% of the optimum (`mip_rel_gap` 1e-3) when it finishes
        inside its time limit, else the best packing found by then, which may be empty."""
        if self.n == 0 or not (values > EPS).any():
            return 0.0, np.zeros(self.n, int)
        pos = self._set(self._mip, values)
        run_for(self._mip, self.time_limit, integer=True)
        counts = np.rint(np.asarray(self._mip.getSolution().col_value)).astype(int)
        counts[~pos] = 0
        return float(np.dot(values, counts)), counts

    def upper_bound(self, values: np.ndarray) -> float:
        """A proven upper bound on the optimum (see the module docstring)."""
        if self.n == 0 or not (values > EPS).any():
            return 0.0
        self._set(self._lp, values)
        run_for(self._lp, self.time_limit)
        if self._lp.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return float(np.dot(np.maximum(values, 0.0), self.ub))  # trivially valid
        lp_value = float(self._lp.getInfo().objective_function_value)
        duals = np.abs(np.asarray(self._lp.getSolution().row_dual))
        lam_load, lam_host = float(duals[1]), float(duals[2])
        reduced = values - lam_load * self.l - lam_host * self.g
        weights = np.floor(self.w / self.grid + 1e-9)
        capacity = int(np.floor(self.caps[0] / self.grid + 1e-9))
        dp = dp_bounded_knapsack(reduced, weights, self.ub, capacity)
        return min(lp_value * (1 + 1e-9) + 1e-9, dp + lam_load * self.caps[1] + lam_host * self.caps[2])
