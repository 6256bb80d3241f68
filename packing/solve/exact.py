"""The exact path, for problems small enough to list every server pattern: the integer master
over all of them (packing/solve/master.py) is then exact up to the node-level host memory it
aggregates, and `integer_nodes` puts every node back where that matters."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pulp

from packing.model.resources import NodeShape
from packing.solve.columngen import ColumnGeneration
from packing.solve.columns import Pattern
from packing.solve.knapsack import Knapsack


def enumerate_all(cg: ColumnGeneration, limit: int) -> bool:
    """Add every feasible server pattern to `cg`. False if there are more than `limit`: then the
    columns added so far are kept, and column generation goes on."""
    cg.seed_columns()
    cg.hot_columns()
    total = 0
    for t, pr in enumerate(cg.pricing.pricers):
        if pr.items.size == 0:
            continue
        found = all_fillings(pr.knapsack("hi"), limit - total)
        if found is None:
            return False
        total += len(found)
        for counts in found:
            cg.add_pattern(cg.pattern_from_counts(t, pr.items, counts))
    return True


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


@dataclass
class NodeSolution:
    pods: List[Tuple[int, int, int]]  # (pattern, shape, node number within the shape), one per pod
    servers: Dict[int, int]  # pattern -> servers
    cost: float
    optimal: bool


def integer_nodes(
    patterns: Sequence[Pattern],
    counts: Sequence[int],
    shapes: Sequence[NodeShape],
    max_nodes: Dict[int, int],
    time_limit: float,
) -> NodeSolution:
    """The exact integer program with every node explicit (small problems only): the integer
    master counts node capacity in aggregate, which can promise a packing no single node holds.

        minimise    sum_{t,k} price_t open_tk
        subject to  sum_j a_ij s_j >= n_i                              every model placed
                    sum_k w_jtk = r_j s_j                              a server's pods
                    sum_j r.. w_jtk <= slots_t open_tk                 one pod per device
                    sum_j host_j w_jtk <= host_t open_tk               node memory
                    open_tk >= open_t,k+1                              (symmetry)
    with w_jtk the pods of pattern j on node k of shape t.
    """
    prob = pulp.LpProblem("nodes", pulp.LpMinimize)
    nodes = {(t, k): pulp.LpVariable(f"open_{t}_{k}", cat=pulp.LpBinary) for t, m in max_nodes.items() for k in range(m)}
    servers = {j: pulp.LpVariable(f"servers_{j}", lowBound=0, cat=pulp.LpInteger) for j in range(len(patterns))}
    pods = {(j, k): pulp.LpVariable(f"pods_{j}_{k}", lowBound=0, cat=pulp.LpInteger)
            for j, p in enumerate(patterns) for k in range(max_nodes.get(p.shape, 0))}
    prob += pulp.lpSum(shapes[t].price * v for (t, _), v in nodes.items())
    cover: Dict[int, List] = defaultdict(list)
    for j, p in enumerate(patterns):
        for i, a in p.counts:
            cover[i].append((servers[j], a))
        prob += pulp.lpSum(pods[j, k] for k in range(max_nodes.get(p.shape, 0))) == p.replicas * servers[j], f"pods_of_{j}"
    for i, n in enumerate(counts):
        prob += pulp.LpAffineExpression(cover[i]) >= int(n), f"place_class_{i}"
    for (t, k), open_ in nodes.items():
        mine = [j for j, p in enumerate(patterns) if p.shape == t]
        prob += pulp.lpSum(pods[j, k] for j in mine) <= shapes[t].slots * open_, f"slots_{t}_{k}"
        prob += pulp.lpSum(patterns[j].host_per_pod * pods[j, k] for j in mine) <= shapes[t].host_alloc_mib * open_, f"host_{t}_{k}"
        if k + 1 < max_nodes[t]:
            prob += open_ >= nodes[t, k + 1], f"order_{t}_{k}"
    prob.solve(pulp.HiGHS(msg=False, timeLimit=max(1.0, time_limit), gapRel=1e-6, threads=1))
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise RuntimeError(f"the node-level integer program found no solution ({pulp.LpStatus[prob.status]})")
    out = []
    for (j, k), v in pods.items():
        out.extend([(j, patterns[j].shape, k)] * int(round(v.varValue or 0)))
    chosen = {j: int(round(v.varValue or 0)) for j, v in servers.items() if (v.varValue or 0) > 0.5}
    cost = sum(shapes[t].price for (t, _), v in nodes.items() if (v.varValue or 0) > 0.5)
    return NodeSolution(out, chosen, cost, prob.sol_status == pulp.LpSolutionOptimal)
