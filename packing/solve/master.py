"""The configuration master, written once: its rows, and what a column puts in them.

    minimise    sum_t price_t N_t
    subject to  sum_j a_ij x_j                                  >= n_i          every class i     (pi_i)
                sum_{j on t} r_j x_j                             <= slots_t N_t  every shape t     (sigma_t)
                sum_{j on t} r_j host_j x_j                      <= host_t N_t   every shape t     (rho_t)
                sum_{j on t, host_j > host_t / q} r_j x_j        <= (q - 1) N_t  q in BIG_POD_SPLITS
                x, N >= 0  (the LP)   or   x, N integer  (the integer master)

A column x_j is a *server pattern* on shape t: a_ij models of class i in each of its r_j pods,
host_j the host memory of one pod; N_t counts nodes of shape t. `Rows` numbers the rows,
`pattern_entries` and `node_entries` say what a column puts in them. Column generation keeps the
LP in HiGHS for fast re-solves (`ConfigurationLP`); the integer master is the same rows as a PuLP
model (`integer_master`); `fewest_nodes` reads the rows backwards, for a start solution.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import highspy
import numpy as np
import pulp

from packing.model.resources import TOLERANCE, NodeShape, nodes_price
from packing.solve.columns import Pattern
from packing.solve.knapsack import new_highs, run_for

INF = highspy.kHighsInf
# A node holds at most q - 1 pods that each take more than 1/q of its memory: the aggregate host
# row alone would let two 60% pods share a node.
BIG_POD_SPLITS = (2, 3)

Entries = List[Tuple[int, float]]  # (row, coefficient)


@dataclass(frozen=True)
class Rows:
    """The master's rows in order: one cover row per class, then per shape its slot row and host
    row, then per shape one big-pod row for each q of BIG_POD_SPLITS."""

    classes: int
    shapes: int

    def cover(self, i: int) -> int:
        return i

    def slots(self, t: int) -> int:
        return self.classes + 2 * t

    def host(self, t: int) -> int:
        return self.classes + 2 * t + 1

    def big(self, t: int, k: int) -> int:
        """The big-pod row of shape t for BIG_POD_SPLITS[k]."""
        return self.classes + 2 * self.shapes + len(BIG_POD_SPLITS) * t + k

    @property
    def count(self) -> int:
        return self.classes + (2 + len(BIG_POD_SPLITS)) * self.shapes

    def name(self, r: int) -> str:
        if r < self.classes:
            return f"place_class_{r}"
        if r < self.classes + 2 * self.shapes:
            t, kind = divmod(r - self.classes, 2)
            return f"{'host_memory' if kind else 'slots'}_{t}"
        t, k = divmod(r - self.classes - 2 * self.shapes, len(BIG_POD_SPLITS))
        return f"big_pods_{BIG_POD_SPLITS[k]}_{t}"


def pod_entries(rows: Rows, shape: NodeShape, t: int, pods: int, host_per_pod: float) -> Entries:
    """What `pods` pods of `host_per_pod` MiB on shape t take of its node rows."""
    out = [(rows.slots(t), float(pods)), (rows.host(t), pods * host_per_pod)]
    for k, q in enumerate(BIG_POD_SPLITS):
        if host_per_pod > shape.host_alloc_mib / q * (1 + TOLERANCE):
            out.append((rows.big(t, k), float(pods)))
    return out


def pattern_entries(rows: Rows, shapes: Sequence[NodeShape], p: Pattern) -> Entries:
    """x_j's column: its models in the cover rows, its pods in its shape's node rows."""
    return [(rows.cover(i), float(a)) for i, a in p.counts] + pod_entries(rows, shapes[p.shape], p.shape, p.replicas,
                                                                            p.host_per_pod)


def node_entries(rows: Rows, shape: NodeShape, t: int) -> Entries:
    """N_t's column: what one node of shape t offers its rows."""
    return ([(rows.slots(t), -float(shape.slots)), (rows.host(t), -shape.host_alloc_mib)]
            + [(rows.big(t, k), -float(q - 1)) for k, q in enumerate(BIG_POD_SPLITS)])


def row_bounds(rows: Rows, demand: Sequence[float]) -> Iterator[Tuple[int, float, float]]:
    """(row, lower, upper): cover rows at least their demand, node rows at most 0."""
    for i in range(rows.classes):
        yield rows.cover(i), float(demand[i]), INF
    for r in range(rows.classes, rows.count):
        yield r, -INF, 0.0


class ConfigurationLP:
    """The master LP in HiGHS, kept between rounds: columns are added and demand rows changed in
    place, and each re-solve starts from the last basis. Artificial columns, one per class, make
    the first master feasible without thousands of seed columns."""

    def __init__(self, shapes: Sequence[NodeShape], demand: np.ndarray, replicas: np.ndarray, min_replicas: int):
        self.shapes, self.demand = list(shapes), demand
        self.rows = Rows(len(demand), len(shapes))
        h = self.h = new_highs()
        # Re-solves start from the last basis; presolve would throw that away every round.
        h.setOptionValue("presolve", "off")
        h.setOptionValue("solver", "simplex")
        lower, upper = zip(*((lo, hi) for _, lo, hi in row_bounds(self.rows, demand)))
        none_i, none_f = np.array([], np.int32), np.array([])
        h.addRows(self.rows.count, np.array(lower), np.array(upper), 0, np.zeros(self.rows.count, np.int32), none_i, none_f)
        for t, s in enumerate(self.shapes):
            self._add_column(s.price, node_entries(self.rows, s, t))
        # Each artificial column costs more than any real way to place one model (whole nodes for
        # all its replicas), so the LP drops them as soon as real columns exist.
        worst = max(s.price for s in self.shapes) * 2.0
        for i, r in enumerate(np.maximum(replicas, min_replicas)):
            self._add_column(worst * float(r), [(self.rows.cover(i), 1.0)])
        self.first_pattern = len(self.shapes) + len(demand)
        self._containing: List[List[Tuple[int, int]]] = [[] for _ in demand]  # class -> (pattern, a)
        self._cut: Dict[Tuple[int, int], int] = {}  # (class, pattern) -> coefficient, where `restrict` cut it
        self._restricted_to = np.asarray(demand).copy()
        self._patterns = 0
        self.closed: Set[int] = set()  # shapes whose nodes the LP may not open (`allow_nodes`)

    def _add_column(self, cost: float, entries: Entries) -> None:
        rows, vals = zip(*entries)
        self.h.addCol(cost, 0.0, INF, len(rows), np.array(rows, np.int32), np.array(vals, float))

    def add_pattern(self, p: Pattern) -> None:
        for i, a in p.counts:
            self._containing[i].append((self._patterns, a))
        self._patterns += 1
        self._add_column(0.0, pattern_entries(self.rows, self.shapes, p))

    def solve(self, deadline: Optional[float] = None) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """(value, pi per class, sigma per shape, rho per shape), the duals as prices >= 0. With a
        `deadline` (time.perf_counter()) HiGHS stops there, and the values are those it had: a
        rounding's restricted LP with its coefficients cut can take thousands of iterations over
        tens of thousands of columns, past any share of the limit."""
        run_for(self.h, INF if deadline is None else max(0.05, deadline - time.perf_counter()))
        duals = np.asarray(self.h.getSolution().row_dual)
        c, k = self.rows.classes, self.rows.shapes
        pi = np.maximum(duals[:c], 0.0)
        sigma = np.maximum(-duals[c:c + 2 * k:2], 0.0)
        rho = np.maximum(-duals[c + 1:c + 2 * k:2], 0.0)
        return float(self.h.getInfo().objective_function_value), pi, sigma, rho

    def pattern_values(self) -> np.ndarray:
        """x_j of the last solve, one per pattern in the order they were added."""
        return np.asarray(self.h.getSolution().col_value)[self.first_pattern:]

    @property
    def optimal(self) -> bool:
        """Whether the last solve ended optimal (not stopped by its deadline)."""
        return self.h.getModelStatus() == highspy.HighsModelStatus.kOptimal

    def node_values(self) -> np.ndarray:
        """N_t of the last solve, one per shape."""
        return np.asarray(self.h.getSolution().col_value)[:self.rows.shapes]

    def allow_nodes(self, t: int, allowed: bool) -> None:
        """Let the LP open nodes of shape t, or not (then no pod goes there; t is in `closed`)."""
        self.h.changeColBounds(t, 0.0, INF if allowed else 0.0)
        if allowed:
            self.closed.discard(t)
        else:
            self.closed.add(t)

    def restrict(self, left: np.ndarray, cut_columns: bool = True) -> None:
        """The master over the models `left` (a rounding's restricted LP): cover rows at `left`,
        and with `cut_columns` each column's coefficient in row i at most left_i, so the LP cannot
        cover a class's last few models with a sliver of a server that holds many. Rows of classes
        with none left keep their coefficients (they ask for nothing), so `restrict(self.demand)`
        restores the master as it was; only rows whose `left` changed are touched."""
        c = self.rows.classes
        self.h.changeRowsBounds(c, np.arange(c, dtype=np.int32), left.astype(float), np.full(c, INF))
        if not cut_columns:
            return
        for i in np.flatnonzero((left != self._restricted_to) & (left > 0)).tolist():
            for j, a in self._containing[i]:
                want = min(a, int(left[i]))
                if self._cut.get((i, j), a) != want:
                    self.h.changeCoeff(self.rows.cover(i), self.first_pattern + j, float(want))
                    if want == a:
                        del self._cut[(i, j)]
                    else:
                        self._cut[(i, j)] = want
        self._restricted_to = left.copy()


@dataclass
class IntegerSolution:
    servers: Dict[int, int]  # pattern index -> number of servers
    nodes: Dict[int, int]  # shape index -> nodes
    cost: float
    optimal: bool
    status: str


class _StartedHiGHS(pulp.HiGHS):
    """HiGHS through highspy with a starting solution: PuLP's highspy interface has no warm
    start of its own, so the values are handed to HiGHS after the model is built."""

    def __init__(self, start: Dict[str, float], **kwargs):
        super().__init__(**kwargs)
        self.start = start

    def callSolver(self, lp):
        index = {v.name: v.index for v in lp.variables()}
        named = [(index[k], float(x)) for k, x in self.start.items() if k in index]
        if named:
            cols, vals = zip(*named)
            lp.solverModel.setSolution(len(cols), np.array(cols, np.int32), np.array(vals, float))
        super().callSolver(lp)


def master_problem(patterns: Sequence[Pattern], counts: Sequence[int], shapes: Sequence[NodeShape],
                   kind: str = pulp.LpInteger) -> Tuple[pulp.LpProblem, Dict[int, pulp.LpVariable], Dict[int, pulp.LpVariable]]:
    """The master's rows over `patterns` as a PuLP model, with servers and nodes of `kind`
    (whole, or continuous for the LP); (problem, servers per pattern, nodes per used shape)."""
    rows = Rows(len(counts), len(shapes))
    prob = pulp.LpProblem("fleet", pulp.LpMinimize)
    used_shapes = sorted({p.shape for p in patterns})
    nodes = {t: pulp.LpVariable(f"nodes_{t}", lowBound=0, cat=kind) for t in used_shapes}
    servers = {j: pulp.LpVariable(f"servers_{j}", lowBound=0, cat=kind) for j in range(len(patterns))}
    prob += pulp.lpSum(shapes[t].price * nodes[t] for t in used_shapes), "cost_per_hour"
    terms: Dict[int, List] = defaultdict(list)
    for t in used_shapes:
        for r, a in node_entries(rows, shapes[t], t):
            terms[r].append((nodes[t], a))
    for j, p in enumerate(patterns):
        for r, a in pattern_entries(rows, shapes, p):
            terms[r].append((servers[j], a))
    for r, lower, upper in row_bounds(rows, counts):
        row = pulp.LpAffineExpression(terms.get(r, []))
        if lower > -INF:
            prob += row >= int(lower), rows.name(r)
        elif any(a > 0 for _, a in terms.get(r, [])):  # a node row no pattern uses holds anyway
            prob += row <= upper, rows.name(r)
    return prob, servers, nodes


def integer_master(
    patterns: Sequence[Pattern],
    counts: Sequence[int],
    shapes: Sequence[NodeShape],
    time_limit: float,
    gap: float = 1e-4,
    start: Optional[Dict[int, int]] = None,
) -> IntegerSolution:
    """The master with whole servers and nodes over `patterns` (`master_problem`), by HiGHS.
    `start`: servers per pattern of a plan already found, HiGHS's first incumbent (with the
    fewest nodes each shape's rows allow), so a time-limited solve ends no dearer than that."""
    prob, servers, nodes = master_problem(patterns, counts, shapes)
    settings = dict(msg=False, timeLimit=max(1.0, time_limit), gapRel=gap, threads=1)
    if start is None:
        solver = pulp.HiGHS(**settings)
    else:
        # Every variable gets a value: the patterns the start leaves out are 0 in it.
        first = {v.name: float(start.get(j, 0)) for j, v in servers.items()}
        first.update({nodes[t].name: float(n) for t, n in fewest_nodes(patterns, start, shapes).items()})
        solver = _StartedHiGHS(first, **settings)
    prob.solve(solver)
    # PuLP reports a time-limited incumbent as "Optimal"; its solution status tells them apart.
    found = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if not found or any(v.varValue is None for v in servers.values()):
        raise RuntimeError(f"the integer master found no solution ({pulp.LpStatus[prob.status]}) within {time_limit:.1f} s")
    status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "time limit (best found)"
    chosen = {j: int(round(v.varValue or 0)) for j, v in servers.items() if (v.varValue or 0) > 0.5}
    n_nodes = {t: int(round(v.varValue or 0)) for t, v in nodes.items() if (v.varValue or 0) > 0.5}
    cost = nodes_price(n_nodes, shapes)
    return IntegerSolution(chosen, n_nodes, cost, status == "optimal", status)


def fewest_nodes(patterns: Sequence[Pattern], servers: Dict[int, int], shapes: Sequence[NodeShape]) -> Dict[int, int]:
    """Per shape, the fewest nodes the master's node rows allow for `servers` (pattern -> count):
    each shape of its used patterns gets a value, 0 included."""
    rows = Rows(0, len(shapes))
    used: Dict[int, float] = defaultdict(float)
    for j, n in servers.items():
        p = patterns[j]
        for r, a in pod_entries(rows, shapes[p.shape], p.shape, p.replicas, p.host_per_pod):
            used[r] += n * a
    need: Dict[int, int] = {}
    for t in {p.shape for p in patterns}:
        # A hair under each ratio's ceiling, so float noise on a full node does not add one.
        need[t] = max(int(math.ceil(used[r] / -a - 1e-9)) for r, a in node_entries(rows, shapes[t], t))
    return need
