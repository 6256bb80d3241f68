"""Column generation for the configuration LP (packing/solve/master.py): price server patterns at
the master's duals (packing/solve/pricing.py) until none prices out, the LP is within a target of
the proven bound (packing/solve/bound.py), or time runs out.

Models hot on every shape they may use have rows of demand 0: no pricing can pair them with
others, so each gets servers of its own on the shape where its replicas cost least per pod slot,
priced apart (`hot_total`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from packing.model.classes import Classes
from packing.model.resources import NodeShape
from packing.solve.bound import FarleyBound
from packing.solve.columns import Pattern, own_server, pattern_of
from packing.solve.master import ConfigurationLP
from packing.solve.pricing import Pricing

EPS = 1e-7
BOUND_EVERY = 15  # rounds between lower-bound evaluations


@dataclass
class ColGenResult:
    patterns: List[Pattern]
    lp_value: float
    lower_bound: float  # on instance $/h, valid for the real models
    iterations: int
    converged: bool
    seconds: float


class ColumnGeneration:
    """The LP's columns (`patterns`, each once), the master over them, and the loop that adds
    more. After `run` (or `read_lp`), `lp_values`, `lp_duals` and `lp_rho` hold the LP's last
    solution, which rounding (packing/solve/rounding.py) starts from."""

    def __init__(self, cls: Classes, shapes: Sequence[NodeShape], min_replicas: int):
        self.cls, self.shapes, self.R = cls, list(shapes), min_replicas
        self.pricing = Pricing(cls, shapes, min_replicas)
        self.patterns: List[Pattern] = []
        self._index: Dict[tuple, int] = {}
        self.bound = 0.0
        slot_cost = np.array([s.price / s.slots for s in shapes])
        self.pure_hot = np.array([bool(cls.eligible[i].any()) and bool(cls.hot[i][cls.eligible[i]].all())
                                  for i in range(len(cls))], bool)
        per_server = np.where(cls.eligible & cls.hot, cls.replicas * slot_cost[None, :], np.inf)
        self.hot_shape = np.argmin(per_server, axis=1)
        self.hot_price = np.where(self.pure_hot, per_server.min(axis=1), 0.0)
        self.demand = np.where(self.pure_hot, 0, cls.count).astype(int)
        self.hot_total = float(np.dot(self.hot_price, cls.count))  # what the LP leaves out
        self.master = ConfigurationLP(shapes, self.demand, cls.replicas.max(axis=1), min_replicas)
        self.farley_bound = FarleyBound(self.pricing, cls, shapes, min_replicas, self.hot_price, self.pure_hot)

    # -- columns ----------------------------------------------------------------------------------
    def add_pattern(self, p: Pattern) -> bool:
        key = (p.shape, p.counts, p.replicas)
        if key in self._index:
            return False
        self._index[key] = len(self.patterns)
        self.patterns.append(p)
        self.master.add_pattern(p)
        return True

    def index_of(self, p: Pattern) -> int:
        """p's column, added if new."""
        self.add_pattern(p)
        return self._index[(p.shape, p.counts, p.replicas)]

    def pattern_from_counts(self, t: int, items: np.ndarray, counts: np.ndarray) -> Pattern:
        return pattern_of(t, self.shapes[t], self.cls, items, counts, self.R)

    def hot_pattern(self, i: int, t: int) -> Pattern:
        return own_server(i, t, self.shapes[t], self.cls)

    def seed_columns(self) -> None:
        """Hot models' servers of their own: fixed patterns, never priced by the knapsacks."""
        cls = self.cls
        for t in range(len(self.shapes)):
            for i in np.flatnonzero(cls.eligible[:, t] & cls.hot[:, t] & ~self.pure_hot):
                self.add_pattern(self.hot_pattern(int(i), t))

    def hot_columns(self) -> set:
        """Every model hot everywhere, on every shape it may use (added if missing)."""
        return {self.index_of(self.hot_pattern(int(i), int(t)))
                for i in np.flatnonzero(self.pure_hot) for t in np.flatnonzero(self.cls.eligible[i])}

    def ensure_cover(self) -> None:
        """If the loop stopped early, a class may have no column yet: give it one of its own on the
        shape where a server of it alone costs least per model, so the integer master is feasible."""
        covered = self.pure_hot.copy()
        for p in self.patterns:
            for i, _ in p.counts:
                covered[i] = True
        for i in np.flatnonzero(~covered):
            best = None
            for t, s in enumerate(self.shapes):
                pr = self.pricing[t]
                k = np.searchsorted(pr.items, i)
                if k == pr.items.size or pr.items[k] != i:
                    continue  # not eligible here, or hot here (hot classes have their own columns)
                a = int(pr.knapsack("hi").ub[k])  # as many as fit one pod, at most the class
                if a < 1:
                    continue
                per_model = s.price / s.slots * self.R / a
                if best is None or per_model < best[0]:
                    best = (per_model, Pattern(t, ((int(i), a),), self.R, s.pod_base_mib + a * float(self.cls.h_hi[i, t])))
            if best is None:
                raise AssertionError(f"class {i}: no shape holds its largest member; classes must be finer")
            self.add_pattern(best[1])

    def pod_cost(self, chosen: Dict[int, int]) -> float:
        """Price of the pods alone (each pod a slot's share of its node): for comparing solutions."""
        return sum(self.shapes[self.patterns[j].shape].price / self.shapes[self.patterns[j].shape].slots
                   * self.patterns[j].replicas * n for j, n in chosen.items())

    # -- the loop ---------------------------------------------------------------------------------
    def price_round(self, at: Tuple[np.ndarray, np.ndarray], lp: Tuple[np.ndarray, np.ndarray, np.ndarray],
                    exact: bool) -> int:
        """Price every shape at the duals `at` (pi, rho); keep a column when its reduced cost at the
        master's own duals `lp` (pi, sigma, rho) is negative. Returns the columns added."""
        pi, sigma, rho = lp
        added = 0
        for t, counts in self.pricing.offers(at[0], at[1], exact):
            p = self.pattern_from_counts(t, self.pricing[t].items, counts)
            gain = sum(pi[i] * a for i, a in p.counts) - p.replicas * (sigma[t] + rho[t] * p.host_per_pod)
            if gain > EPS + 1e-9 * abs(sigma[t]):
                added += self.add_pattern(p)
        return added

    def run(self, deadline: float, target_gap: float = 0.002,
            progress: Optional[Callable[[int, float, float], None]] = None,
            warm: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> ColGenResult:
        """Price at the master's duals until no column prices out (the LP is then optimal to the
        knapsack MIP's 1e-3 gap: `converged`), the LP is within `target_gap` of the best proven
        bound, or the deadline passes (checked after each round that added columns). Pricing is
        the rounded LP relaxation of each knapsack; the knapsack MIP runs only when that finds
        nothing. `warm` duals (the fluid relaxation's) give the first bound."""
        start = time.perf_counter()
        self.seed_columns()
        self.bound = 0.0
        if warm is not None:
            self.bound = self.farley_bound(warm[0], warm[1])
        it, converged = self.iterate(deadline, target_gap=target_gap, progress=progress)
        self.ensure_cover()
        value = self.read_lp() + self.hot_total
        self.bound = max(self.bound, self.farley_bound(self.lp_duals, self.lp_rho))
        return ColGenResult(self.patterns, value, self.bound, it, converged, time.perf_counter() - start)

    def iterate(self, deadline: float, target_gap: Optional[float] = None, max_rounds: int = 10**9,
                progress: Optional[Callable[[int, float, float], None]] = None,
                stop_lp: bool = False) -> Tuple[int, bool]:
        """Rounds of pricing; with a `target_gap` the bound is refreshed and checked as well;
        `stop_lp`: the master's solves stop at the deadline too (a rounding's, which must end in
        its time; column generation's own solves are warm and short, and its bound needs them
        finished). Returns (rounds, converged)."""
        it, exact = 0, False
        while it < max_rounds:
            it += 1
            value, pi, sigma, rho = self.master.solve(deadline if stop_lp else None)
            if target_gap is not None and (it % BOUND_EVERY == 0 or exact):
                self.bound = max(self.bound, self.farley_bound(pi, rho))
            if progress:
                progress(it, value + self.hot_total, self.bound)
            if target_gap is not None and value + self.hot_total - self.bound <= target_gap * (value + self.hot_total):
                return it, False
            if self.price_round((pi, rho), (pi, sigma, rho), exact) == 0:
                if exact:
                    return it, True
                exact = True
                continue
            exact = False
            if time.perf_counter() > deadline:
                break
        return it, False

    def read_lp(self, deadline: Optional[float] = None) -> float:
        """Solve the master (until `deadline`, if given) and keep its solution (`lp_values`,
        `lp_duals`, `lp_rho`); its value."""
        value, pi, _, rho = self.master.solve(deadline)
        self.lp_values = self.master.pattern_values()
        self.lp_duals, self.lp_rho = pi, rho
        return value
