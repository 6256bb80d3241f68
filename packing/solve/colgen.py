"""Column generation for the configuration LP, and the Farley bound that makes it a proof.

The master (a PuLP model in `packing.solve.formulation`; here kept in HiGHS for fast re-solves):

    minimise    sum_t price_t N_t
    subject to  sum_j a_ij x_j                >= n_i          for every class i          (pi_i)
                sum_{j in t} r_j x_j           <= slots_t N_t  for every shape t          (sigma_t)
                sum_{j in t} r_j host_j x_j    <= host_t N_t   for every shape t          (rho_t)
                sum_{j in t, host_j > host_t/q} r_j x_j <= (q - 1) N_t   for q in BIG_POD_SPLITS
                x, N >= 0

where a column j is a *server pattern* on shape t: a_ij models of class i in each of its r_j
pods, host_j the host memory of one pod. Models hot on every shape they may use have rows of
demand 0: each gets servers of its own, priced apart (`hot_total`). Pricing a shape is a knapsack
with three constraints (pod memory, utilisation, host memory for models) and values
pi_i - r rho_t h_i. Most rounds price it by a rounded LP; when that finds no column, HiGHS solves
it as a MIP (packing/solve/knapsack.py: to a 1e-3 relative gap within 2 s), so "no column prices out"
means optimal to that gap, not exactly. The bound below never relies on it: it uses the
knapsack's proven upper bound.

Bound. For any duals pi >= 0 and rho >= 0, one node of shape t can earn at most
    V_t = slots_t x max(0, max_j (pi.a_j - r_j rho_t host_j) / r_j) + host_t x rho_t
(LP duality on the node's own slot and host rows; the big-pod rows are left out, which only
relaxes), so theta = min_t price_t / V_t makes theta x pi dual feasible and theta x sum_i n_i pi_i
is a lower bound on every plan (Farley). theta is not capped at 1: when no node earns its price at
these duals, scaling them up is still dual feasible. Tiers of one instance type share nodes, so
V is taken per instance type, over the best pod of any of its tiers.
Pricing for the bound uses the classes' `lo` values and the knapsack's proven upper bound, so the
bound holds for the real models even when the loop stopped early.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import highspy
import numpy as np

from packing.model.classes import Classes
from packing.model.resources import TOLERANCE, NodeShape, node_groups, pod_caps
from packing.solve.knapsack import Knapsack, new_highs

INF = highspy.kHighsInf
EPS = 1e-7
COLUMNS_PER_ROUND = 3  # per shape: the knapsack's answer, then greedy answers over what it left out
# A node holds at most q - 1 pods that each take more than 1/q of its memory: the aggregate host
# row alone would let two 60% pods share a node.
BIG_POD_SPLITS = (2, 3)
BOUND_EVERY = 15  # rounds between lower-bound evaluations
ROUND_UP_FROM = 0.35  # in iterated rounding, a column at 0.65 or more counts as a whole server
# A rounding pass in which fewer than this share of the LP support rounds up by itself also fixes
# the largest columns up to that share. 0 (what rounded best here) means: only when no column
# rounds up by itself, and then just the largest one.
DIVE_FRACTION = 0.0


@dataclass(frozen=True)
class Pattern:
    """A server on one shape: `counts[i]` models of class i in each of its `replicas` pods."""

    shape: int
    counts: Tuple[Tuple[int, int], ...]  # sorted (class, count)
    replicas: int
    host_per_pod: float


@dataclass
class ColGenResult:
    patterns: List[Pattern]
    lp_value: float
    lower_bound: float  # on instance $/h, valid for the real models
    iterations: int
    converged: bool
    seconds: float


def all_fillings(knap: Knapsack, limit: int) -> Optional[List[np.ndarray]]:
    """Every non-empty count vector that fits the knapsack's caps, or None past `limit`."""
    need = np.stack([knap.w, knap.l, knap.g], axis=1)
    found: List[np.ndarray] = []
    counts = np.zeros(knap.n, int)
    ok = _fill(0, np.array(knap.caps, float), need, knap.ub, counts, found, limit)
    return found if ok else None


def _fill(k: int, left: np.ndarray, need: np.ndarray, ub: np.ndarray, counts: np.ndarray,
          found: List[np.ndarray], limit: int) -> bool:
    if k == len(counts):
        if counts.any():
            found.append(counts.copy())
        return len(found) <= limit
    a = 0
    while a <= ub[k] and not (left - a * need[k] < 0).any():
        counts[k] = a
        if not _fill(k + 1, left - a * need[k], need, ub, counts, found, limit):
            counts[k] = 0
            return False
        a += 1
    counts[k] = 0
    return True


class ShapePricer:
    """The pricing knapsacks of one shape: `hi` (columns that are valid) and `lo` (bounds that are
    valid). Shapes whose pods face the same limits share one knapsack object (see `key`)."""

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


class ColumnGeneration:
    def __init__(self, cls: Classes, shapes: Sequence[NodeShape], min_replicas: int):
        self.cls, self.shapes, self.R = cls, list(shapes), min_replicas
        shared: Dict[tuple, Knapsack] = {}
        self.pricers = [ShapePricer(j, s, cls, min_replicas, shared) for j, s in enumerate(shapes)]
        self.patterns: List[Pattern] = []
        self._known: set = set()
        self._index: Dict[tuple, int] = {}
        self.bound = 0.0
        # Models hot on every shape they may use have servers of their own wherever they go: no
        # pricing can pair them with others, so they stay out of the LP (their rows demand 0) and
        # each gets the shape where its replicas cost least per pod slot.
        slot_cost = np.array([s.price / s.slots for s in shapes])
        self.pure_hot = np.array([bool(cls.eligible[i].any()) and bool(cls.hot[i][cls.eligible[i]].all())
                                  for i in range(len(cls))], bool)
        per_server = np.where(cls.eligible & cls.hot, cls.replicas * slot_cost[None, :], np.inf)
        self.hot_shape = np.argmin(per_server, axis=1)
        self.hot_price = np.where(self.pure_hot, per_server.min(axis=1), 0.0)
        self.demand = np.where(self.pure_hot, 0, cls.count).astype(int)
        self.hot_total = float(np.dot(self.hot_price, cls.count))  # what the LP leaves out
        self.h = new_highs()
        # Re-solves start from the last basis; presolve would throw that away every round.
        self.h.setOptionValue("presolve", "off")
        self.h.setOptionValue("solver", "simplex")
        self._build_master()

    # -- master ---------------------------------------------------------------------------------
    def _build_master(self) -> None:
        c, k = len(self.cls), len(self.shapes)
        h, none_i, none_f = self.h, np.array([], np.int32), np.array([])
        prices = np.array([s.price for s in self.shapes])
        h.addCols(k, prices, np.zeros(k), np.full(k, INF), 0, np.zeros(k, np.int32), none_i, none_f)
        h.addRows(c, self.demand.astype(float), np.full(c, INF), 0, np.zeros(c, np.int32), none_i, none_f)
        for t, s in enumerate(self.shapes):
            h.addRow(-INF, 0.0, 1, np.array([t], np.int32), np.array([-float(s.slots)]))
            h.addRow(-INF, 0.0, 1, np.array([t], np.int32), np.array([-s.host_alloc_mib]))
        for t in range(k):
            for q in BIG_POD_SPLITS:
                h.addRow(-INF, 0.0, 1, np.array([t], np.int32), np.array([-float(q - 1)]))
        # Artificial columns make the first master feasible without thousands of seed columns. Each
        # costs more than any real way to place one model (whole nodes for all its replicas), so the
        # LP drops them as soon as real columns exist.
        worst = max(s.price for s in self.shapes) * 2.0
        big = worst * np.maximum(self.cls.replicas.max(axis=1), self.R).astype(float)
        rows = np.arange(c, dtype=np.int32)
        h.addCols(c, big, np.zeros(c), np.full(c, INF), c, rows, rows, np.ones(c))

    def slot_row(self, t: int) -> int:
        return len(self.cls) + 2 * t

    def add_pattern(self, p: Pattern) -> bool:
        key = (p.shape, p.counts, p.replicas)
        if key in self._known:
            return False
        self._known.add(key)
        self._index[key] = len(self.patterns)
        self.patterns.append(p)
        rows = [i for i, _ in p.counts] + [self.slot_row(p.shape), self.slot_row(p.shape) + 1]
        vals = [float(a) for _, a in p.counts] + [float(p.replicas), p.replicas * p.host_per_pod]
        for n, q in enumerate(BIG_POD_SPLITS):
            if p.host_per_pod > self.shapes[p.shape].host_alloc_mib / q * (1 + TOLERANCE):
                rows.append(len(self.cls) + 2 * len(self.shapes) + len(BIG_POD_SPLITS) * p.shape + n)
                vals.append(float(p.replicas))
        self.h.addCol(0.0, 0.0, INF, len(rows), np.array(rows, np.int32), np.array(vals))
        return True

    def pattern_from_counts(self, t: int, items: np.ndarray, counts: np.ndarray) -> Pattern:
        nz = counts > 0
        pairs = tuple(sorted((int(i), int(a)) for i, a in zip(items[nz], counts[nz], strict=True)))
        host = self.shapes[t].pod_base_mib + float(sum(self.cls.h_hi[i, t] * a for i, a in pairs))
        return Pattern(t, pairs, self.R, host)

    def solve_master(self) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        self.h.run()
        duals = np.asarray(self.h.getSolution().row_dual)
        c, k = len(self.cls), len(self.shapes)
        pi = np.maximum(duals[:c], 0.0)
        sigma = np.maximum(-duals[c:c + 2 * k:2], 0.0)
        rho = np.maximum(-duals[c + 1:c + 2 * k:2], 0.0)
        return float(self.h.getInfo().objective_function_value), pi, sigma, rho

    # -- columns ----------------------------------------------------------------------------------
    def seed_columns(self) -> None:
        """Hot models' servers of their own: fixed patterns, never priced by the knapsacks."""
        cls = self.cls
        for t in range(len(self.shapes)):
            for i in np.flatnonzero(cls.eligible[:, t] & cls.hot[:, t] & ~self.pure_hot):
                self.add_pattern(self.hot_pattern(int(i), t))

    def hot_pattern(self, i: int, t: int) -> Pattern:
        s = self.shapes[t]
        return Pattern(t, ((i, 1),), int(self.cls.replicas[i, t]), s.pod_base_mib + float(self.cls.h_hi[i, t]))

    def candidates(self, pr: ShapePricer, pi: np.ndarray, rho: float, exact: bool) -> List[Tuple[float, np.ndarray]]:
        """Columns for one shape this round: the knapsack's answer, then further greedy answers
        over the classes it left out, so one round offers the master a whole packing at once."""
        knap = pr.knapsack("hi")
        values, const = pr.values(pi, rho, "hi")
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

    def price_round(self, at: Tuple[np.ndarray, np.ndarray], lp: Tuple[np.ndarray, np.ndarray, np.ndarray],
                    exact: bool) -> int:
        """Price every shape at the duals `at` (pi, rho); keep a column when its reduced cost at the
        master's own duals `lp` (pi, sigma, rho) is negative."""
        pi_at, rho_at = at
        pi, sigma, rho = lp
        added = 0
        seen: Dict[tuple, list] = {}
        for t, pr in enumerate(self.pricers):
            if pr.items.size == 0:
                continue
            key = (id(pr.knapsack("hi")), float(rho_at[t]) * pr.r, pr.shape.pod_base_mib)
            if key not in seen:
                seen[key] = self.candidates(pr, pi_at, rho_at[t], exact)
            for _, counts in seen[key]:
                if not counts.any():
                    continue
                p = self.pattern_from_counts(t, pr.items, counts)
                gain = sum(pi[i] * a for i, a in p.counts) - p.replicas * (sigma[t] + rho[t] * p.host_per_pod)
                if gain > EPS + 1e-9 * abs(sigma[t]):
                    added += self.add_pattern(p)
        return added

    def pod_cost(self, chosen: Dict[int, int]) -> float:
        """Price of the pods alone (each pod a slot's share of its node): for comparing solutions."""
        return sum(self.shapes[self.patterns[j].shape].price / self.shapes[self.patterns[j].shape].slots
                   * self.patterns[j].replicas * n for j, n in chosen.items())

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
                pr = self.pricers[t]
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

    def run(self, deadline: float, target_gap: float = 0.002,
            progress: Optional[Callable[[int, float, float], None]] = None,
            warm: Optional[Tuple[np.ndarray, np.ndarray]] = None, checkpoints: Sequence[float] = (),
            at_checkpoint: Optional[Callable[[], None]] = None) -> ColGenResult:
        """Price at the master's duals until no column prices out (the LP is then optimal to the
        knapsack MIP's 1e-3 gap: `converged`), the LP is within `target_gap` of the best proven
        bound, or the deadline passes (checked after each round that added columns). Pricing is
        the rounded LP relaxation of each knapsack; the knapsack MIP runs only when that finds
        nothing. `warm` duals (the fluid relaxation's) give the first bound. `at_checkpoint` is
        called after the first round that ends past each of the moments `checkpoints`
        (time.perf_counter(), each moved later by the time earlier calls took); it may round
        (`round_now`), whose time comes out of the loop's: the deadline does not move."""
        start = time.perf_counter()
        self.seed_columns()
        self.bound = 0.0
        if warm is not None:
            self.bound = self.farley_bound(warm[0], warm[1])
        it, converged = self._iterate(deadline, target_gap=target_gap, progress=progress,
                                      checkpoints=sorted(checkpoints) if at_checkpoint else [],
                                      at_checkpoint=at_checkpoint)
        self.ensure_cover()
        value = self._read_lp() + self.hot_total
        self.bound = max(self.bound, self.farley_bound(self.lp_duals, self.lp_rho))
        return ColGenResult(self.patterns, value, self.bound, it, converged, time.perf_counter() - start)

    def _iterate(self, deadline: float, target_gap: Optional[float] = None, max_rounds: int = 10**9,
                 progress: Optional[Callable[[int, float, float], None]] = None,
                 checkpoints: Sequence[float] = (), at_checkpoint: Optional[Callable[[], None]] = None) -> Tuple[int, bool]:
        """Rounds of pricing; with a `target_gap` the bound is refreshed and checked as well."""
        it, exact = 0, False
        pending = list(checkpoints)
        while it < max_rounds:
            it += 1
            value, pi, sigma, rho = self.solve_master()
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
            if pending and time.perf_counter() >= pending[0] and at_checkpoint is not None:
                before = time.perf_counter()
                while pending and before >= pending[0]:
                    pending.pop(0)
                at_checkpoint()
                # The moments count the loop's own time: without this shift a rounding that ends
                # past the next moment is followed at once by another over nearly the same LP.
                spent = time.perf_counter() - before
                pending = [m + spent for m in pending]
        return it, False

    def _read_lp(self) -> float:
        value, pi, _, rho = self.solve_master()
        sol = self.h.getSolution()
        first = len(self.shapes) + len(self.cls)
        self.lp_values = np.asarray(sol.col_value)[first:]
        self.lp_duals, self.lp_rho = pi, rho
        return value

    def round_now(self, deadline: float) -> Dict[int, int]:
        """Iterated rounding of the LP as it stands, part-way through column generation. The
        rounding re-solves restricted LPs on the master and restores its demand rows after, so
        the loop goes on over the same LP, with the columns the rounding priced added (valid
        columns, though they slow its re-solves: packing/planner.py, ROUNDING_CHECKPOINTS); its
        values and duals are read again before they are used."""
        self._read_lp()
        return self.integer_solution(deadline)

    def integer_solution(self, deadline: float, rounds_per_pass: int = 4) -> Dict[int, int]:
        """Whole servers from the LP by iterated rounding: keep every pattern's whole servers,
        re-solve the LP (with a few pricing rounds) for the models left, and repeat; when the LP
        has no whole server, round up its largest column (a dive). What the deadline leaves is
        packed greedily. The bound is not touched: it was proven on the full problem."""
        # A class of models hot everywhere holds alike hot models (same replicas): each member
        # gets a server of its own.
        chosen: Dict[int, int] = {}
        for i in np.flatnonzero(self.pure_hot):
            j = self.index_of(self.hot_pattern(int(i), int(self.hot_shape[i])))
            chosen[j] = chosen.get(j, 0) + int(self.cls.count[i])
        left = self.demand.copy()
        c = len(self.cls)
        while left.sum() > 0 and time.perf_counter() < deadline:
            x = self.lp_values
            whole = np.floor(x + ROUND_UP_FROM).astype(int)  # x >= 1 - ROUND_UP_FROM rounds up
            support = np.flatnonzero(x > 1e-9)
            if support.size == 0:
                break
            # Dive: when fewer than `want` columns round up by themselves, fix the largest `want`
            # (at least one), so every pass fixes a server.
            want = max(1, int(DIVE_FRACTION * support.size))
            if int((whole > 0).sum()) < want:
                for j in support[np.argsort(-x[support], kind="stable")][:want]:
                    whole[j] = max(whole[j], 1)
            for j in np.flatnonzero(whole):
                chosen[int(j)] = chosen.get(int(j), 0) + int(whole[j])
                for i, a in self.patterns[j].counts:
                    left[i] -= int(whole[j]) * a
            left = np.maximum(left, 0)
            if left.sum() == 0:
                break
            self.h.changeRowsBounds(c, np.arange(c, dtype=np.int32), left.astype(float), np.full(c, INF))
            self._iterate(deadline, max_rounds=rounds_per_pass)
            self._read_lp()
        for j, n in self.repair(left).items():
            chosen[j] = chosen.get(j, 0) + n
        self.h.changeRowsBounds(c, np.arange(c, dtype=np.int32), self.demand.astype(float), np.full(c, INF))
        return chosen

    def repair(self, left: np.ndarray) -> Dict[int, int]:
        """Pack the models `left` greedily: each pod on the shape where it earns the most per
        dollar, with the LP's duals as values so the scarce classes go first."""
        chosen: Dict[int, int] = {}
        left = left.copy()
        values = np.maximum(self.lp_duals, 1e-6)
        while left.sum() > 0:
            best = None
            for t, pr in enumerate(self.pricers):
                per_pod = self.shapes[t].price / self.shapes[t].slots
                for i in np.flatnonzero(self.cls.eligible[:, t] & self.cls.hot[:, t] & (left > 0)):
                    r = int(self.cls.replicas[i, t])
                    p = Pattern(t, ((int(i), 1),), r, self.shapes[t].pod_base_mib + float(self.cls.h_hi[i, t]))
                    if best is None or values[i] / (per_pod * r) > best[0]:
                        best = (values[i] / (per_pod * r), p)
                if pr.items.size == 0 or left[pr.items].sum() == 0:
                    continue
                _, counts = pr.knapsack("hi").greedy(values[pr.items], ub=left[pr.items])
                if counts.any():
                    score = float(np.dot(values[pr.items], counts)) / (per_pod * self.R)
                    if best is None or score > best[0]:
                        best = (score, self.pattern_from_counts(t, pr.items, counts))
            if best is None:
                raise AssertionError("models left that no shape can take")
            j = self.index_of(best[1])
            chosen[j] = chosen.get(j, 0) + 1
            for i, a in best[1].counts:
                left[i] = max(0, left[i] - a)
        return chosen

    def fits(self, p: Pattern, t: int) -> Optional[Pattern]:
        """The same server on shape t, if every model may go there and the pod still fits."""
        cls, s = self.cls, self.shapes[t]
        if not all(cls.eligible[i, t] for i, _ in p.counts):
            return None
        hot = [i for i, _ in p.counts if cls.hot[i, t]]
        if hot:
            if len(p.counts) != 1:
                return None
            i = hot[0]
            return Pattern(t, p.counts, int(cls.replicas[i, t]), s.pod_base_mib + float(cls.h_hi[i, t]))
        if any(cls.hot[i, p.shape] for i, _ in p.counts):
            return None  # a hot model's own server there, a shared one here: not the same server
        caps = pod_caps(s)
        mem = sum(cls.d_hi[i, t] * a for i, a in p.counts)
        load = sum(cls.u_hi[i, t] * a for i, a in p.counts) / self.R
        host = sum(cls.h_hi[i, t] * a for i, a in p.counts)
        if mem <= caps[0] and load <= caps[1] and host <= caps[2]:
            return Pattern(t, p.counts, self.R, s.pod_base_mib + host)
        return None

    def enumerate_all(self, limit: int) -> bool:
        """Add every feasible server pattern (small problems only). False if there are more than
        `limit`: then the columns added so far are kept, and column generation goes on."""
        self.seed_columns()
        self.hot_columns()
        total = 0
        for t, pr in enumerate(self.pricers):
            if pr.items.size == 0:
                continue
            found = all_fillings(pr.knapsack("hi"), limit - total)
            if found is None:
                return False
            total += len(found)
            for counts in found:
                self.add_pattern(self.pattern_from_counts(t, pr.items, counts))
        return True

    def moved(self, p: Pattern, t: int) -> List[Pattern]:
        """Server p on shape t: as it is if it fits, else its models split over two servers
        (greedy), else nothing."""
        q = self.fits(p, t)
        if q is not None:
            return [q]
        pr = self.pricers[t]
        if any(self.cls.hot[i, t] or not self.cls.eligible[i, t] for i, _ in p.counts) or pr.items.size == 0:
            return []
        where = {int(i): k for k, i in enumerate(pr.items)}
        want = np.zeros(pr.items.size, int)
        for i, a in p.counts:
            want[where[i]] = a
        _, first = pr.knapsack("hi").greedy(np.where(want > 0, 1.0, 0.0), ub=want)
        rest = want - first
        if not first.any() or not rest.any():
            return []
        halves = [self.pattern_from_counts(t, pr.items, first), self.pattern_from_counts(t, pr.items, rest)]
        return halves if all(self.fits(h, t) is not None for h in halves) else []

    def hot_columns(self) -> set:
        """Every model hot everywhere, on every shape it may use (added if missing)."""
        return {self.index_of(self.hot_pattern(int(i), int(t)))
                for i in np.flatnonzero(self.pure_hot) for t in np.flatnonzero(self.cls.eligible[i])}

    def index_of(self, p: Pattern) -> int:
        self.add_pattern(p)
        return self._index[(p.shape, p.counts, p.replicas)]

    # -- bound ------------------------------------------------------------------------------------
    def slot_value_bound(self, t: int, pi: np.ndarray, rho: float) -> float:
        """What one pod of shape t can earn at duals pi, host memory priced at rho, proven (lo
        values, knapsack bound)."""
        s, cls = self.shapes[t], self.cls
        per_slot = 0.0
        pr = self.pricers[t]
        if pr.items.size:
            knap = pr.knapsack("lo")
            key = (id(knap), rho * pr.r, s.pod_base_mib)
            if key not in self._slot_cache:
                values, const = pr.values(pi, rho, "lo")
                self._slot_cache[key] = (knap.upper_bound(values) - const) / self.R
            per_slot = max(per_slot, self._slot_cache[key])
        for i in np.flatnonzero(cls.eligible[:, t] & cls.hot[:, t]):
            r = int(cls.replicas[i, t])
            per_slot = max(per_slot, (pi[i] - r * rho * (s.pod_base_mib + cls.h_lo[i, t])) / r)
        return per_slot

    def farley_bound(self, pi: np.ndarray, rho: np.ndarray) -> float:
        """theta x sum_i n_i pi_i with theta = min_g price_g / V_g: theta pi is dual feasible, so
        this is a lower bound for *any* pi, rho >= 0 (theta may exceed 1 when no node earns its price).

        A node of instance type g may hold pods of any of its SLO tiers, so V_g takes the best
        pod over all of them, with one host-memory price for the node (the least of its tiers')."""
        theta = float("inf")
        self._slot_cache: Dict[tuple, float] = {}
        pi = np.where(self.pure_hot, self.hot_price, pi)
        tiers: Dict[int, List[int]] = {}
        for t, g in enumerate(node_groups(self.shapes)):
            tiers.setdefault(g, []).append(t)
        for g, members in tiers.items():
            s = self.shapes[g]
            rho_g = float(min(rho[t] for t in members))
            v = s.slots * max(self.slot_value_bound(t, pi, rho_g) for t in members) + s.host_alloc_mib * rho_g
            if v > EPS:
                theta = min(theta, s.price / v)
        if not np.isfinite(theta):
            return 0.0
        return max(0.0, theta * float(np.dot(self.cls.count, pi)))
