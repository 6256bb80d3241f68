"""Column generation for the configuration LP, and the Farley bound that makes it a proof.

The master (a PuLP model in `packing.formulation`; here kept in HiGHS for fast re-solves):

    minimise    sum_t price_t N_t
    subject to  sum_j a_ij x_j                >= n_i          for every class i          (pi_i)
                sum_{j in t} r_j x_j           <= slots_t N_t  for every shape t          (sigma_t)
                sum_{j in t} r_j host_j x_j    <= host_t N_t   for every shape t          (rho_t)
                x, N >= 0

where a column j is a *server pattern* on shape t: a_ij models of class i in each of its r_j
pods, host_j the host memory of one pod. Pricing a shape is a two-constraint knapsack (pod memory
and utilisation) with values pi_i - r rho_t h_i; it is solved exactly by HiGHS, so when no column
prices out the LP is optimal.

Bound. For any duals pi >= 0 and rho >= 0, one node of shape t can earn at most
    V_t = slots_t x max(0, max_j (pi.a_j - r_j rho_t host_j) / r_j) + host_t x rho_t
(LP duality on the node's own slot and host rows), so theta = min(1, min_t price_t / V_t) makes
theta x pi dual feasible and theta x sum_i n_i pi_i is a lower bound on every plan (Farley).
Pricing for the bound uses the classes' `lo` values and the knapsack's proven dual bound, so the
bound holds for the real models even when the loop stopped early.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import highspy
import numpy as np

from packing.classes import Classes
from packing.resources import NodeShape

INF = highspy.kHighsInf
EPS = 1e-7


@dataclass(frozen=True)
class Pattern:
    """A server on one shape: `counts[i]` models of class i in each of its `replicas` pods."""

    shape: int
    counts: Tuple[Tuple[int, int], ...]  # sorted (class, count)
    replicas: int
    host_per_pod: float

    def covers(self) -> Dict[int, int]:
        return dict(self.counts)


@dataclass
class ColGenResult:
    patterns: List[Pattern]
    lp_value: float
    lower_bound: float  # on instance $/h, valid for the real models
    iterations: int
    converged: bool
    seconds: float
    duals: Optional[np.ndarray] = None
    log: List[str] = field(default_factory=list)


def _new_highs() -> highspy.Highs:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)  # set before the first run: later it is silently ignored
    return h


def pod_caps(s: NodeShape) -> Tuple[float, float, float]:
    """What one pod may hold: model memory, utilisation, host memory for models (relative tolerance)."""
    tol = 1 + 1e-9
    return (s.device_memory_cap_mib * tol, s.utilisation_cap * tol, (s.host_alloc_mib - s.pod_base_mib) * tol)


class Knapsack:
    """max sum v_i a_i  s.t.  sum w_i a_i <= cap,  sum l_i a_i <= load_cap,  sum g_i a_i <= host_cap,
    0 <= a_i <= ub_i integer (pod memory, utilisation, and the pod's host memory on its node)."""

    def __init__(self, items: np.ndarray, weight: np.ndarray, load: np.ndarray, host: np.ndarray, ub: np.ndarray,
                 cap: float, load_cap: float, host_cap: float, time_limit: float = 5.0):
        self.items = items
        self.ub = ub.astype(float)
        self.h = _new_highs()
        self.h.setOptionValue("mip_rel_gap", 1e-6)
        self.h.setOptionValue("time_limit", time_limit)
        n = len(items)
        idx = np.arange(n, dtype=np.int32)
        self.idx = idx
        self.h.addCols(n, np.zeros(n), np.zeros(n), self.ub, 0, np.zeros(n, np.int32),
                       np.array([], np.int32), np.array([]))
        self.h.addRow(-INF, cap, n, idx, weight.astype(float))
        self.h.addRow(-INF, load_cap, n, idx, load.astype(float))
        self.h.addRow(-INF, host_cap, n, idx, host.astype(float))
        self.h.changeColsIntegrality(n, idx, np.full(n, highspy.HighsVarType.kInteger))
        self.h.changeObjectiveSense(highspy.ObjSense.kMaximize)

    def solve(self, values: np.ndarray) -> Tuple[float, float, np.ndarray]:
        """Returns (best value found, proven upper bound, counts)."""
        n = len(self.items)
        if n == 0:
            return 0.0, 0.0, np.zeros(0, int)
        pos = values > EPS
        if not pos.any():
            return 0.0, 0.0, np.zeros(n, int)
        self.h.changeColsCost(n, self.idx, np.where(pos, values, 0.0))
        self.h.changeColsBounds(n, self.idx, np.zeros(n), np.where(pos, self.ub, 0.0))
        self.h.run()
        info = self.h.getInfo()
        counts = np.rint(np.asarray(self.h.getSolution().col_value)).astype(int)
        best = float(np.dot(np.where(pos, values, 0.0), counts))
        bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else float("inf")
        return best, max(best, bound), counts


class ShapePricer:
    """Both knapsacks of one shape: `hi` (columns that are valid) and `lo` (bounds that are valid)."""

    def __init__(self, j: int, shape: NodeShape, cls: Classes, replicas: int):
        self.j, self.shape, self.r = j, shape, replicas
        self.items = np.flatnonzero(cls.eligible[:, j] & ~cls.hot[:, j])
        self.cls = cls
        self._knap: Dict[str, Knapsack] = {}

    def knapsack(self, side: str) -> Knapsack:
        if side not in self._knap:
            c, j, s, it = self.cls, self.j, self.shape, self.items
            d = (c.d_hi if side == "hi" else c.d_lo)[it, j]
            u = (c.u_hi if side == "hi" else c.u_lo)[it, j] / self.r
            g = (c.h_hi if side == "hi" else c.h_lo)[it, j]
            caps = pod_caps(s)
            fit = np.minimum.reduce([np.floor(cap / np.maximum(x, 1e-12)) for x, cap in zip((d, u, g), caps)])
            ub = np.minimum(c.count[it], fit)
            self._knap[side] = Knapsack(it, d, u, g, ub, *caps)
        return self._knap[side]

    def price(self, pi: np.ndarray, rho: float, side: str = "hi") -> Tuple[float, float, np.ndarray]:
        """max over patterns of pi.a - r rho host: (value, proven upper bound, counts)."""
        h = (self.cls.h_hi if side == "hi" else self.cls.h_lo)[self.items, self.j]
        values = pi[self.items] - self.r * rho * h
        best, bound, counts = self.knapsack(side).solve(values)
        const = self.r * rho * self.shape.pod_base_mib
        return best - const, bound - const, counts


class ColumnGeneration:
    def __init__(self, cls: Classes, shapes: Sequence[NodeShape], min_replicas: int):
        self.cls, self.shapes, self.R = cls, list(shapes), min_replicas
        self.pricers = [ShapePricer(j, s, cls, min_replicas) for j, s in enumerate(shapes)]
        self.patterns: List[Pattern] = []
        self._known: set = set()
        self.h = _new_highs()
        self._build_master()

    # -- master ---------------------------------------------------------------------------------
    def _build_master(self) -> None:
        c, k = len(self.cls), len(self.shapes)
        h = self.h
        prices = np.array([s.price for s in self.shapes])
        h.addCols(k, prices, np.zeros(k), np.full(k, INF), 0, np.zeros(k, np.int32), np.array([], np.int32), np.array([]))
        h.addRows(c, self.cls.count.astype(float), np.full(c, INF), 0, np.zeros(c, np.int32), np.array([], np.int32), np.array([]))
        for t, s in enumerate(self.shapes):
            h.addRow(-INF, 0.0, 1, np.array([t], np.int32), np.array([-float(s.slots)]))
            h.addRow(-INF, 0.0, 1, np.array([t], np.int32), np.array([-s.host_alloc_mib]))

    def slot_row(self, t: int) -> int:
        return len(self.cls) + 2 * t

    def add_pattern(self, p: Pattern) -> bool:
        key = (p.shape, p.counts, p.replicas)
        if key in self._known:
            return False
        self._known.add(key)
        self.patterns.append(p)
        rows = [i for i, _ in p.counts] + [self.slot_row(p.shape), self.slot_row(p.shape) + 1]
        vals = [float(a) for _, a in p.counts] + [float(p.replicas), p.replicas * p.host_per_pod]
        self.h.addCol(0.0, 0.0, INF, len(rows), np.array(rows, np.int32), np.array(vals))
        return True

    def pattern_from_counts(self, t: int, items: np.ndarray, counts: np.ndarray, replicas: int, side="hi") -> Pattern:
        nz = counts > 0
        pairs = tuple(sorted((int(i), int(a)) for i, a in zip(items[nz], counts[nz])))
        hh = self.cls.h_hi if side == "hi" else self.cls.h_lo
        host = self.shapes[t].pod_base_mib + float(sum(hh[i, t] * a for i, a in pairs))
        return Pattern(t, pairs, replicas, host)

    def solve_master(self) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        self.h.run()
        sol = self.h.getSolution()
        duals = np.asarray(sol.row_dual)
        c = len(self.cls)
        pi = np.maximum(duals[:c], 0.0)
        sigma = np.maximum(-duals[c::2], 0.0)
        rho = np.maximum(-duals[c + 1::2], 0.0)
        return float(self.h.getInfo().objective_function_value), pi, sigma, rho

    # -- columns ----------------------------------------------------------------------------------
    def seed_columns(self) -> None:
        """Feasible start: every class alone on every shape it may use, as full as it can be."""
        cls = self.cls
        for t, s in enumerate(self.shapes):
            for i in np.flatnonzero(cls.eligible[:, t]):
                if cls.hot[i, t]:
                    r = int(cls.replicas[i, t])
                    self.add_pattern(Pattern(t, ((int(i), 1),), r, s.pod_base_mib + float(cls.h_hi[i, t])))
                    continue
                caps = pod_caps(s)
                a = min(int(cls.count[i]),
                        int(caps[0] // max(cls.d_hi[i, t], 1e-12)),
                        int(caps[1] // max(cls.u_hi[i, t] / self.R, 1e-12)),
                        int(caps[2] // max(cls.h_hi[i, t], 1e-12)))
                if a < 1:
                    continue  # only a lo-valued member fits here; the class goes elsewhere
                self.add_pattern(Pattern(t, ((int(i), a),), self.R, s.pod_base_mib + a * float(cls.h_hi[i, t])))

    def run(self, deadline: float, log_every: int = 0, progress=None) -> ColGenResult:
        start = time.perf_counter()
        self.seed_columns()
        it, converged, value = 0, False, float("inf")
        pi = np.zeros(len(self.cls))
        rho = np.zeros(len(self.shapes))
        # Shapes with the same pod limits and no host price share one knapsack answer per round.
        while True:
            it += 1
            value, pi, sigma, rho = self.solve_master()
            added = 0
            cache: Dict[tuple, Tuple[float, float, np.ndarray]] = {}
            for t, pr in enumerate(self.pricers):
                if pr.items.size == 0:
                    continue
                key = (self.shapes[t].family_key(), self.shapes[t].pod_base_mib, round(rho[t], 12), pr.items.tobytes())
                if key not in cache:
                    cache[key] = pr.price(pi, rho[t], "hi")
                best, _, counts = cache[key]
                if best > self.R * sigma[t] * (1 + 1e-9) + EPS:
                    added += self.add_pattern(self.pattern_from_counts(t, pr.items, counts, self.R))
            if progress:
                progress(it, value)
            if added == 0:
                converged = True
                break
            if time.perf_counter() > deadline:
                break
        value, pi, sigma, rho = self.solve_master()
        bound = self.farley_bound(pi, rho)
        return ColGenResult(self.patterns, value, bound, it, converged, time.perf_counter() - start, pi)

    # -- bound ------------------------------------------------------------------------------------
    def node_value_bound(self, t: int, pi: np.ndarray, rho: float) -> float:
        """V_t: what one node of shape t can earn at duals pi, proven (lo values, MIP dual bound)."""
        s, cls = self.shapes[t], self.cls
        per_slot = 0.0
        pr = self.pricers[t]
        if pr.items.size:
            _, ub, _ = pr.price(pi, rho, "lo")
            per_slot = max(per_slot, ub / self.R)
        for i in np.flatnonzero(cls.eligible[:, t] & cls.hot[:, t]):
            r = int(cls.replicas[i, t])
            per_slot = max(per_slot, (pi[i] - r * rho * (s.pod_base_mib + cls.h_lo[i, t])) / r)
        return s.slots * per_slot + s.host_alloc_mib * rho

    def farley_bound(self, pi: np.ndarray, rho: np.ndarray) -> float:
        theta = 1.0
        for t, s in enumerate(self.shapes):
            v = self.node_value_bound(t, pi, float(rho[t]))
            if v > EPS:
                theta = min(theta, s.price / v)
        return max(0.0, theta * float(np.dot(self.cls.count, pi)))
